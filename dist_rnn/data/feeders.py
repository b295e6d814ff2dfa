"""The feeders that batch the training split in the sampler's order: straight from the split (the
default: from memory on the device, or from disk for Arrow data), or through a DataLoader's worker
processes (--loader dataloader: torchvision's MNIST for the image sets, the split itself for
sequences)."""

from __future__ import annotations

import multiprocessing as mp
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import torch

from dist_rnn.data.idx import SPLIT_FILES, import_torchvision, torchvision_root
from dist_rnn.data.sampler import GlobalBatchSampler
from dist_rnn.data.splits import Split

if TYPE_CHECKING:
    from dist_rnn.data.arrow import ArrowSplit


class MemoryFeeder:
    """The default: the training images live on the device as uint8 (55 MB for MNIST), and each step
    gathers its batch there with one index, in the sampler's order. A split on disk (ArrowSplit)
    stays there: each step reads its rank's rows and sends them to the device."""

    def __init__(self, train: "Split | ArrowSplit", device: torch.device):
        self.train, self.device = train.to(device), device

    def batches(self, sampler: GlobalBatchSampler, into: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs: images uint8 (b, H, W) or sequences, labels (b,)) from the sampler's position to
        its epoch's end; gathered straight into the tensors `into` when given (a graphed step reads
        those)."""
        indices = sampler.epoch_indices()
        if self.train.device.type == "cuda":  # once an epoch, without making the host wait for the copy
            indices = indices.pin_memory().to(self.train.device, non_blocking=True)
        for k in range(sampler.batch_in_epoch, sampler.steps_per_epoch):
            if into is None:
                yield (self.train.inputs(indices[k]).to(self.device, non_blocking=True),
                       self.train.labels[indices[k]].to(self.device, non_blocking=True))
            elif isinstance(self.train, Split):
                torch.index_select(self.train.images, 0, indices[k], out=into[0])
                torch.index_select(self.train.labels, 0, indices[k], out=into[1])
                yield into
            else:
                into[0].copy_(self.train.inputs(indices[k]), non_blocking=True)
                into[1].copy_(self.train.labels[indices[k]], non_blocking=True)
                yield into


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


class DataLoaderFeeder:
    """--loader dataloader: a standard DataLoader(sampler=..., num_workers=..., pin_memory=...), the
    pipeline for data that does not fit in memory: for the image sets torchvision's MNIST dataset read
    from the same files; for sequences the split itself, each worker reading whole batches. Same
    sampler, so the same batches as MemoryFeeder."""

    def __init__(self, data_dir: Optional[Path], samples: "int | list[int] | Split | ArrowSplit",
                 device: torch.device, num_workers: int):
        self.device, self.num_workers, self._unpacked = device, num_workers, None
        if data_dir is None:  # sequences: the split, as it is
            self.dataset, self.collate = SplitRows(samples), batch_as_read
            return
        self.collate = None
        torchvision = import_torchvision()
        root = Path(data_dir)
        if not all((root / "MNIST" / "raw" / name).is_file() for names in SPLIT_FILES.values() for name in names):
            # torchvision reads only uncompressed files in <root>/MNIST/raw: unpack them for this run
            self._unpacked = tempfile.TemporaryDirectory(prefix="dist_rnn-mnist-")
            root = torchvision_root(root, Path(self._unpacked.name))
        to_tensor = torchvision.transforms.PILToTensor()  # uint8 (1, H, W), as the IDX file holds it
        dataset = torchvision.datasets.MNIST(root=str(root), train=True, transform=to_tensor, download=False)
        # The training file's first n samples, or the listed ones (those a validation split left).
        self.dataset = torch.utils.data.Subset(dataset, range(samples) if isinstance(samples, int) else samples)

    def batches(self, sampler: GlobalBatchSampler, into: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches from the DataLoader; copied into `into` when given (by the graphed step)."""
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=sampler.local_batch, sampler=sampler,
                                             drop_last=True, num_workers=self.num_workers,
                                             collate_fn=self.collate,
                                             # forked workers share the open data files (an Arrow split
                                             # cannot be pickled to a spawned one)
                                             multiprocessing_context="fork" if self.collate and self.num_workers
                                             and "fork" in mp.get_all_start_methods() else None,
                                             pin_memory=self.device.type == "cuda",
                                             # its workers' base seed from a generator of its own: drawing it
                                             # from the global one would shift every dropout mask after it
                                             generator=torch.Generator().manual_seed(0))
        for images, labels in loader:
            images = images if self.collate else images.squeeze(1)  # torchvision's (b, 1, H, W)
            if into is None:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            else:
                into[0].copy_(images, non_blocking=True)
                into[1].copy_(labels, non_blocking=True)
                yield into


def feeder(kind: str, train: "Split | ArrowSplit", device: torch.device, num_workers: int,
           mnist_dir: Optional[str] = None,
           indices: Optional[torch.Tensor] = None) -> "MemoryFeeder | DataLoaderFeeder":
    """The batch feeder --loader names. `mnist_dir`: the image files torchvision reads for `train`
    (None for sequences); `indices`: which samples of its training file `train` holds (a validation
    split takes some out), default its first len(train)."""
    if kind != "dataloader":
        return MemoryFeeder(train, device)
    if mnist_dir is None:
        return DataLoaderFeeder(None, train, device, num_workers)
    return DataLoaderFeeder(Path(mnist_dir), len(train) if indices is None else indices.tolist(), device, num_workers)
