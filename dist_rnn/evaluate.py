"""Exact distributed evaluation: each rank scores its own padding-free shard, then counts are summed."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn.amp import autocast
from dist_rnn.data import Split, as_sequences, eval_shard
from dist_rnn.distributed import DistEnv, all_reduce_sum, unwrap


@torch.no_grad()
def evaluate(model: nn.Module, test: Split, env: DistEnv, batch_size: int, precision: str) -> dict[str, Any]:
    """Accuracy and mean loss over the whole test split, each sample counted exactly once.

    Runs the unwrapped module: evaluation needs no gradient sync, and going through DDP's forward
    on one rank only would leave the others behind. DistributedSampler would pad the shards to equal
    size (counting some samples twice); contiguous shards of unequal size need no padding.
    """
    module = unwrap(model)
    was_training = module.training
    module.eval()
    shard = eval_shard(len(test), env.rank, env.world_size)
    images, labels = test.images[shard], test.labels[shard]
    # correct, count, loss sum: one all-reduce; float64 counts stay exact far beyond 10k samples
    totals = torch.zeros(3, dtype=torch.float64, device=env.device)
    for start in range(0, len(labels), batch_size):
        x, y = as_sequences(images[start:start + batch_size]), labels[start:start + batch_size]
        with autocast(precision, env.device):
            logits = module(x)
        totals[0] += (logits.argmax(dim=1) == y).sum()
        totals[1] += len(y)
        totals[2] += F.cross_entropy(logits.float(), y, reduction="sum")
    module.train(was_training)
    correct, count, loss_sum = all_reduce_sum(totals, env).tolist()
    return {"test_accuracy": correct / count, "test_correct": int(correct),
            "test_samples": int(count), "test_loss": loss_sum / count}
