"""The feeders that batch the training split in the sampler's order: from memory on the device (the
default), or through torchvision's MNIST and a DataLoader (--loader dataloader)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator, Optional

import torch

from dist_rnn.data.idx import SPLIT_FILES, import_torchvision, torchvision_root
from dist_rnn.data.sampler import GlobalBatchSampler
from dist_rnn.data.splits import Split


class MemoryFeeder:
    """The default: the training images live on the device as uint8 (55 MB for MNIST), and each step
    gathers its batch there with one index, in the sampler's order."""

    def __init__(self, train: Split, device: torch.device):
        self.train, self.device = train.to(device), device

    def batches(self, sampler: GlobalBatchSampler, into: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images uint8 (b, H, W), labels (b,)) from the sampler's position to its epoch's end;
        gathered straight into the tensors `into` when given (a graphed step reads those)."""
        indices = sampler.epoch_indices().to(self.device)
        for k in range(sampler.batch_in_epoch, sampler.steps_per_epoch):
            if into is None:
                yield self.train.images[indices[k]], self.train.labels[indices[k]]
            else:
                torch.index_select(self.train.images, 0, indices[k], out=into[0])
                torch.index_select(self.train.labels, 0, indices[k], out=into[1])
                yield into


class DataLoaderFeeder:
    """--loader dataloader: torchvision's MNIST dataset, read from the same files, through a standard
    DataLoader(sampler=..., num_workers=..., pin_memory=...): the pipeline for data that does not fit
    in memory. Same sampler, so the same batches as MemoryFeeder."""

    def __init__(self, data_dir: Path, samples: "int | list[int]", device: torch.device, num_workers: int):
        torchvision = import_torchvision()
        root, self._unpacked = Path(data_dir), None
        if not all((root / "MNIST" / "raw" / name).is_file() for names in SPLIT_FILES.values() for name in names):
            # torchvision reads only uncompressed files in <root>/MNIST/raw: unpack them for this run
            self._unpacked = tempfile.TemporaryDirectory(prefix="dist_rnn-mnist-")
            root = torchvision_root(root, Path(self._unpacked.name))
        to_tensor = torchvision.transforms.PILToTensor()  # uint8 (1, H, W), as the IDX file holds it
        dataset = torchvision.datasets.MNIST(root=str(root), train=True, transform=to_tensor, download=False)
        # The training file's first n samples, or the listed ones (those a validation split left).
        self.dataset = torch.utils.data.Subset(dataset, range(samples) if isinstance(samples, int) else samples)
        self.device, self.num_workers = device, num_workers

    def batches(self, sampler: GlobalBatchSampler, into: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches from the DataLoader; copied into `into` when given (by the graphed step)."""
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=sampler.local_batch, sampler=sampler,
                                             drop_last=True, num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda",
                                             # its workers' base seed from a generator of its own: drawing it
                                             # from the global one would shift every dropout mask after it
                                             generator=torch.Generator().manual_seed(0))
        for images, labels in loader:
            if into is None:
                yield images.squeeze(1).to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            else:
                into[0].copy_(images.squeeze(1), non_blocking=True)
                into[1].copy_(labels, non_blocking=True)
                yield into


def feeder(kind: str, train: Split, device: torch.device, data_dir: str, num_workers: int,
           indices: Optional[torch.Tensor] = None) -> "MemoryFeeder | DataLoaderFeeder":
    """The batch feeder --loader names; `indices`: which samples of the training file `train` holds
    (a validation split takes some out), default its first len(train)."""
    if kind == "dataloader":
        return DataLoaderFeeder(Path(data_dir), len(train) if indices is None else indices.tolist(), device,
                                num_workers)
    return MemoryFeeder(train, device)
