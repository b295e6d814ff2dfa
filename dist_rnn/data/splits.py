"""One split in memory (images or padded sequences, and labels), and the validation split held out of
the training set: seeded, stratified, the same at any world size. Arrow data keeps its sequences on
disk instead (arrow.ArrowSplit): both kinds answer `inputs(index)` and `subset(index)`, and nothing
else reads a split's inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from dist_rnn.errors import UserError

if TYPE_CHECKING:
    from dist_rnn.data.arrow import ArrowSplit


@dataclass
class Split:
    """One split in memory: inputs (`images`: (N, H, W) uint8 images, or (N, T, C[+1]) float32 padded
    sequences, see series.py) and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: "torch.Tensor | slice") -> torch.Tensor:
        """The inputs of the samples `index` picks (on this split's device)."""
        return self.images[index]

    def subset(self, index: "torch.Tensor | slice") -> "Split":
        return Split(self.images[index], self.labels[index])

    def head(self, n: Optional[int]) -> "Split":
        """The first n samples (all when n is None), for small runs."""
        return self if n is None else self.subset(slice(0, n))

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def sequence_lengths(self) -> torch.Tensor:
        """Each padded sequence's length (int64, on the CPU), which series.padded keeps in the last
        channel at step 0 when lengths differ."""
        return self.images[:, 0, -1].long().cpu()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's input shape ((H, W), or (T, C[+1]))."""
        return tuple(self.images.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.images.dtype

    @property
    def device(self) -> torch.device:
        return self.images.device


class SplitRows(torch.utils.data.Dataset):
    """A split as a DataLoader's dataset: each batch read whole (`__getitems__`), as MemoryFeeder reads it."""

    def __init__(self, split: "Split | ArrowSplit"):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = self.__getitems__([i])
        return inputs[0], labels[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor(indices)
        return self.split.inputs(index), self.split.labels[index]


def batch_as_read(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The collate_fn of SplitRows: its batches come whole (a module-level function: workers pickle it)."""
    return batch


def validation_split(train: "Split | ArrowSplit", size: float, seed: int, folds: int = 0,
                     fold: int = 0) -> tuple["Split | ArrowSplit", "Split | ArrowSplit", torch.Tensor]:
    """(training split without the validation samples, validation split, the kept training indices).

    `size` is a count (>= 1) or a fraction (< 1) of the training split; or, with `folds` K, the
    validation split is fold `fold` of K: each class's samples, shuffled, cut into K near-equal parts
    (so the K folds of one seed hold every sample exactly once). Stratified either way, drawn from a
    generator seeded by `seed` alone, so every rank, every world size and every resume holds out the
    same samples."""
    n = len(train)
    classes = train.labels.unique(sorted=True)
    members = [torch.nonzero(train.labels == c).flatten() for c in classes]
    g = torch.Generator().manual_seed(seed)
    if folds:
        held = torch.cat([m[torch.randperm(len(m), generator=g)].tensor_split(folds)[fold] for m in members])
        count = len(held)
        if not 0 < count < n:
            raise UserError(f"`val_folds`={folds}: fold {fold} holds {count} of the {n} training samples")
    else:
        count = int(size) if size >= 1 else round(size * n)
        if not 0 < count < n:
            raise UserError(f"`val_size`={size:g} holds out {count} of the {n} training samples: it must leave "
                            "some for each of training and validation")
        exact = [count * len(m) / n for m in members]
        quota = [int(q) for q in exact]
        by_remainder = sorted(range(len(members)), key=lambda i: (-(exact[i] - quota[i]), i))
        for i in by_remainder[:count - sum(quota)]:
            quota[i] += 1
        held = torch.cat([m[torch.randperm(len(m), generator=g)[:k]] for m, k in zip(members, quota)])
    held = held.sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    kept = torch.nonzero(keep).flatten()
    return train.subset(kept), train.subset(held), kept
