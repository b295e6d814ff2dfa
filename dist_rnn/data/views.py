"""How an image becomes a sequence (rows, columns, pixels, pixels backwards, permuted pixels)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from dist_rnn.config import TrainConfig
from dist_rnn.data.series import SeriesView
from dist_rnn.errors import UserError

SEQUENCES = ("row", "column", "pixel", "reversed", "permuted")
IMAGE_SHAPE = (28, 28)  # every IDX image set's (MNIST, Fashion-MNIST, KMNIST)


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

    @classmethod
    def from_config(cls, c: TrainConfig, images: torch.Tensor, pixel_order: Optional[list[int]] = None,
                    ) -> "SequenceView":
        """The view a run trains with, for images like `images` (N, H, W); with a checkpoint's
        saved pixel order (the one its model learned) when there is one."""
        height, width = images.shape[1:]
        return cls(c.sequence, height, width, permutation_seed=c.permutation_seed, permutation=pixel_order,
                   crop=(c.crop_top, c.crop_bottom))

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
        images = torch.as_tensor(np.asarray(X))
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


def trained_view(config: TrainConfig, state: Any) -> "SequenceView | SeriesView":
    """How a checkpoint's model reads its inputs, from its config and TrainState: the sequences'
    standardisation it was trained with, or the images' view (its pixel order included)."""
    if state.series is not None:
        return SeriesView.from_state(state.series)
    height, width = IMAGE_SHAPE
    return SequenceView(config.sequence, height, width, permutation_seed=config.permutation_seed,
                        permutation=state.pixel_order, crop=(config.crop_top, config.crop_bottom))


def trained_classes(state: Any, num_classes: int) -> list[Any]:
    """A checkpoint's classes as its training labels were: the sequences' labels, or the digits."""
    return list(state.series["classes"]) if state.series is not None else list(range(num_classes))


def as_sequences(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, T=H, F=W) in [0, 1]: each image read row by row, as ToTensor() scales."""
    return images.float().div_(255)
