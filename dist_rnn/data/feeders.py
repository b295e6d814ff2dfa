"""The feeders that batch the training split in the sampler's order: straight from the split (the
default: from memory on the device, or from disk for Arrow data), or through a DataLoader's worker
processes (--loader dataloader, over the Dataset the data offers: torchvision's MNIST for the image
sets, the split itself for sequences)."""

from __future__ import annotations

import multiprocessing as mp
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import torch

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


class DataLoaderFeeder:
    """--loader dataloader: a standard DataLoader(sampler=..., num_workers=..., pin_memory=...), the
    pipeline for data that does not fit in memory, over the Dataset the data offers for it (see
    `loader_dataset` of ImageInfo and SeriesInfo). Same sampler, so the same batches as MemoryFeeder."""

    def __init__(self, dataset: torch.utils.data.Dataset, collate: Optional[Callable], device: torch.device,
                 num_workers: int):
        self.dataset, self.collate, self.device, self.num_workers = dataset, collate, device, num_workers

    def batches(self, sampler: GlobalBatchSampler, into: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches from the DataLoader; copied into `into` when given (by the graphed step)."""
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=sampler.local_batch, sampler=sampler,
                                             drop_last=True, num_workers=self.num_workers,
                                             collate_fn=self.collate,
                                             # forked workers share the open data files (an Arrow split
                                             # cannot be pickled to a spawned one)
                                             multiprocessing_context="fork" if self.num_workers
                                             and "fork" in mp.get_all_start_methods() else None,
                                             pin_memory=self.device.type == "cuda",
                                             # its workers' base seed from a generator of its own: drawing it
                                             # from the global one would shift every dropout mask after it
                                             generator=torch.Generator().manual_seed(0))
        for images, labels in loader:
            if into is None:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            else:
                into[0].copy_(images, non_blocking=True)
                into[1].copy_(labels, non_blocking=True)
                yield into


def feeder(kind: str, train: "Split | ArrowSplit", device: torch.device, num_workers: int,
           loader_dataset: Callable[[], tuple[torch.utils.data.Dataset, Optional[Callable]]],
           ) -> "MemoryFeeder | DataLoaderFeeder":
    """The batch feeder --loader names; `loader_dataset` gives the (Dataset, collate_fn) a DataLoader
    reads the training split through."""
    if kind != "dataloader":
        return MemoryFeeder(train, device)
    return DataLoaderFeeder(*loader_dataset(), device, num_workers)
