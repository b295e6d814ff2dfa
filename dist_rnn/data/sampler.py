"""The sample order: global batches that are the same at every world size, resumable inside an epoch;
and the padding-free shards of exact evaluation."""

from __future__ import annotations

from typing import Iterator, Optional

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

    Length bucketing (`lengths` and `bucket_batches` = K > 0): the epoch's shuffled order is cut
    into pools of K global batches, each pool's samples are sorted by length (stably) and cut into
    global batches, each batch keeps its samples in their shuffled order (so every rank gets a fair
    share of long and short ones), and the epoch's batches are shuffled. A batch then holds
    sequences of similar length (less padding, fewer steps that few sequences are still running),
    and it is still a function of the seed and the epoch alone: the same at any world size.

    Iterating yields this rank's sample indices from the current position (`batch_in_epoch` of
    `epoch`, see state_dict), so a DataLoader(batch_size=local_batch, sampler=...) resumes
    mid-epoch; `epoch_indices()` is the same order as one (steps, local_batch) tensor, for feeding
    batches from memory without a DataLoader.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, seed: int,
                 lengths: Optional[torch.Tensor] = None, bucket_batches: int = 0):
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
        self.lengths, self.bucket_batches = lengths, bucket_batches

    def epoch_indices(self) -> torch.Tensor:
        """This epoch's indices for this rank, (steps_per_epoch, local_batch): row k is its part of global batch k."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.steps_per_epoch * self.global_batch]
        if self.bucket_batches and self.lengths is not None:
            batches = []
            for pool in perm.split(self.bucket_batches * self.global_batch):
                by_length = torch.sort(self.lengths[pool], stable=True).indices.view(-1, self.global_batch)
                batches.append(pool[by_length.sort(dim=1).values])  # each batch in its shuffled order
            perm = torch.cat(batches)[torch.randperm(self.steps_per_epoch, generator=g)].reshape(-1)
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
