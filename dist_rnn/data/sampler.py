"""The sample order: global batches that are the same at every world size, resumable inside an epoch;
and the padding-free shards of exact evaluation."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data.distributed import DistributedSampler

from dist_rnn.errors import UserError


class GlobalBatchSampler(DistributedSampler):
    """DistributedSampler whose global batches are the same at every world size.

    Epoch e shuffles all N indices with a generator seeded `seed + e` (DistributedSampler's
    convention, the same on every rank), cuts them into N // global_batch global batches (the
    incomplete tail is dropped so every step has the same shape), and rank r of W takes rows
    [r*b, (r+1)*b) of each, b = global_batch / W. So global batch k holds the same samples at every
    world size, and the mean of the rank losses is the global-batch loss: the same trajectory. The
    stock sampler deals indices round-robin instead, so its batches change with W.

    Iterating yields this rank's sample indices from the current position (`batch_in_epoch` of
    `epoch`, see state_dict), so a DataLoader(batch_size=local_batch, sampler=...) resumes
    mid-epoch; `epoch_indices()` is the same order as one (steps, local_batch) tensor, for feeding
    batches from memory without a DataLoader.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise UserError(f"`batch_size`={global_batch} (global) does not divide over "
                            f"{world_size} processes")
        if n < global_batch:
            raise UserError(f"`batch_size`={global_batch} is larger than the training set ({n} samples)")
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.n, self.global_batch = n, global_batch
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = n // global_batch
        self.batch_in_epoch = 0

    def epoch_indices(self) -> torch.Tensor:
        """This epoch's indices for this rank, (steps_per_epoch, local_batch): row k is its part of global batch k."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.steps_per_epoch * self.global_batch]
        return perm.view(self.steps_per_epoch, self.num_replicas, self.local_batch)[:, self.rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.batch_in_epoch:].reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.batch_in_epoch) * self.local_batch

    def set_epoch(self, epoch: int) -> None:
        """A new epoch starts at its first batch."""
        super().set_epoch(epoch)
        self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]


def eval_shard(n: int, rank: int, world_size: int) -> slice:
    """Contiguous, non-overlapping, padding-free shard of n samples: the shards add up to exactly n."""
    return slice(n * rank // world_size, n * (rank + 1) // world_size)
