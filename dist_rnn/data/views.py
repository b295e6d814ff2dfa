"""The image sets as the Trainer sees them (ImageInfo), how an image becomes a sequence (rows,
columns, pixels, pixels backwards, permuted pixels), and a checkpoint's view rebuilt whatever its
data was (trained_view)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from dist_rnn.config import TrainConfig
from dist_rnn.data.idx import NUM_CLASSES, SPLIT_FILES, import_torchvision, torchvision_root
from dist_rnn.data.series import SeriesView
from dist_rnn.data.splits import Split
from dist_rnn.errors import UserError

SEQUENCES = ("row", "column", "pixel", "reversed", "permuted")
InputView = Callable[[torch.Tensor], Any]  # a view: a batch of raw inputs -> what the model reads


class SequenceView:
    """How an image becomes a sequence: `row` (28 steps of 28 pixels, the default), `column` (the
    transposed image), `pixel` (784 steps of 1 pixel), `reversed` (the pixels last to first: the
    blank bottom rows come first) or `permuted` (784 steps of 1 pixel, in one fixed random order
    drawn from `permutation_seed`), of the rows left after dropping `crop` = (top, bottom) rows. Call
    it on uint8 (B, H, W) images."""

    def __init__(self, kind: str, height: int = 28, width: int = 28, permutation_seed: int = 0,
                 permutation: Optional[list[int]] = None, crop: tuple[int, int] = (0, 0)):
        if kind not in SEQUENCES:
            raise ValueError(f"sequence must be one of {SEQUENCES}, got {kind!r}")
        if sum(crop) >= height:
            raise UserError(f"`crop_top`={crop[0]} and `crop_bottom`={crop[1]} leave none of the images' {height} rows")
        # `height` is the images'; the view reads the rows that the crop leaves
        self.kind, self.height, self.width, self.crop = kind, height - sum(crop), width, crop
        self.permutation: Optional[torch.Tensor] = None
        if kind == "permuted" and permutation is not None:
            self.permutation = torch.tensor(permutation)
        elif kind == "permuted":
            self.permutation = torch.randperm(self.height * self.width,
                                              generator=torch.Generator().manual_seed(permutation_seed))

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the config: the images' size and the pixel order learned."""
        return {"kind": "images", "height": self.height + sum(self.crop), "width": self.width,
                "pixel_order": None if self.permutation is None else self.permutation.tolist()}

    @classmethod
    def from_state(cls, c: TrainConfig, state: dict[str, Any]) -> "SequenceView":
        return cls(c.sequence, state["height"], state["width"], permutation_seed=c.permutation_seed,
                   permutation=state["pixel_order"], crop=(c.crop_top, c.crop_bottom))

    def check_data(self, info: Any, dataset: str) -> None:
        """Images of the size this view was made for (one line if not)."""
        if not hasattr(info, "shape"):
            raise UserError(f"`dataset` {dataset}: sequence data, and the checkpoint was trained on images")
        shape = (self.height + sum(self.crop), self.width)
        if tuple(info.shape) != shape:
            raise UserError(f"`dataset` {dataset}: its images are {info.shape[0]}x{info.shape[1]}, the checkpoint "
                            f"was trained on {shape[0]}x{shape[1]}")

    @property
    def classes(self) -> list[int]:
        return list(range(NUM_CLASSES))

    def describe(self, dataset: str) -> str:
        return f"{dataset}, {self.kind} view"

    def answer(self, index: int) -> dict[str, Any]:
        """What predict reports for class `index`: the digit."""
        return {"digit": index}

    def warning(self) -> Optional[str]:
        """Something about the data a user should hear before training (images: nothing)."""
        return None

    @property
    def input_size(self) -> int:
        """Features per step: what the RNN's first layer reads."""
        return {"row": self.width, "column": self.height}.get(self.kind, 1)

    @property
    def steps(self) -> int:
        return {"row": self.height, "column": self.width}.get(self.kind, self.height * self.width)

    def to(self, device: torch.device) -> "SequenceView":
        if self.permutation is not None:
            self.permutation = self.permutation.to(device)
        return self

    def read(self, X: Any, device: torch.device) -> torch.Tensor:
        """Images handed over in Python (uint8, (n, H, W) as the training images) as the model reads them."""
        images = X.cpu() if torch.is_tensor(X) else torch.as_tensor(np.asarray(X))
        shape = (self.height + sum(self.crop), self.width)
        if images.dtype != torch.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != shape:
            raise UserError(f"X: {images.dtype} images of shape {tuple(images.shape)}: this model reads uint8 images "
                            f"(n, {shape[0]}, {shape[1]}), as it was trained on")
        return self(images.to(device))

    def exportable(self) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """This view as a module of raw uint8 images (N, H, W), and example inputs to trace it with."""
        return ImageView(self), (torch.zeros(2, self.height + sum(self.crop), self.width, dtype=torch.uint8),)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        top, bottom = self.crop
        x = as_sequences(images[:, top:images.shape[1] - bottom] if top or bottom else images)
        if self.kind == "column":
            return x.transpose(1, 2).contiguous()
        if self.kind == "row":
            return x
        x = x.flatten(1)  # (traced by Classifier.export: no batch size baked in)
        if self.kind == "reversed":
            x = x.flip(1)
        if self.permutation is not None:
            x = x[:, self.permutation]
        return x.unsqueeze(-1)


class ImageView(nn.Module):
    """A SequenceView as a module, for Classifier.export (tracing keeps its pixel order)."""

    def __init__(self, view: SequenceView):
        super().__init__()
        self.view = view

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.view(images)


def squeeze_channel(image: torch.Tensor) -> torch.Tensor:
    """torchvision's (1, H, W) image as the IDX file holds it, (H, W) (a module-level function: workers pickle it)."""
    return image.squeeze(0)


@dataclass
class ImageInfo:
    """An IDX image set, as the Trainer sees it: 10 classes, one size, no lengths to pack."""

    dataset: str
    data_dir: Path
    shape: tuple[int, int]
    classes: list[int] = field(default_factory=lambda: list(range(NUM_CLASSES)))
    variable_length = False

    def view(self, c: TrainConfig, train: Split, saved: Optional[dict[str, Any]]) -> SequenceView:
        """The view a run trains with; a resumed run's saved one (its pixel order) when there is one."""
        if saved is not None:
            view = SequenceView.from_state(c, saved)
            view.check_data(self, c.dataset)
            return view
        return SequenceView(c.sequence, *self.shape, permutation_seed=c.permutation_seed,
                            crop=(c.crop_top, c.crop_bottom))

    def loader_dataset(self, train: Split, indices: Optional[torch.Tensor]) -> tuple[Any, Optional[Callable]]:
        """torchvision's MNIST dataset of the same files (`--loader dataloader`), limited to the
        training file's samples `train` holds (`indices`; default its first len(train))."""
        torchvision = import_torchvision()
        root, unpacked = self.data_dir, None
        if not all((root / "MNIST" / "raw" / name).is_file() for names in SPLIT_FILES.values() for name in names):
            # torchvision reads only uncompressed files in <root>/MNIST/raw: unpack them for this run
            unpacked = tempfile.TemporaryDirectory(prefix="dist_rnn-mnist-")  # removed with the dataset
            root = torchvision_root(self.data_dir, Path(unpacked.name))
        to_tensor = torchvision.transforms.Compose([torchvision.transforms.PILToTensor(), squeeze_channel])
        dataset = torchvision.datasets.MNIST(root=str(root), train=True, transform=to_tensor, download=False)
        subset = torch.utils.data.Subset(dataset, range(len(train)) if indices is None else indices.tolist())
        subset.unpacked = unpacked
        return subset, None


# How a checkpoint's saved view state becomes the view again, by the kind of data it was made for.
VIEWS: dict[str, Callable[[TrainConfig, dict[str, Any]], Any]] = {
    "images": SequenceView.from_state,
    "series": lambda c, state: SeriesView.from_state(state),
}


def trained_view(config: TrainConfig, state: dict[str, Any]) -> "SequenceView | SeriesView":
    """How a checkpoint's model reads its inputs (TrainState.view): the sequences' standardisation it
    was trained with, or the images' view (its pixel order included)."""
    return VIEWS[state["kind"]](config, state)


def format_2_view_state(series: Optional[dict[str, Any]], pixel_order: Optional[list[int]]) -> dict[str, Any]:
    """The view state of a checkpoint of format 1 or 2, which kept the sequences' standardisation
    (`series`) and the image views' pixel order apart (their images were 28x28)."""
    if series is not None:
        return {"kind": "series", **series}
    return {"kind": "images", "height": 28, "width": 28, "pixel_order": pixel_order}


def as_sequences(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, T=H, F=W) in [0, 1]: each image read row by row, as ToTensor() scales."""
    return images.float().div_(255)
