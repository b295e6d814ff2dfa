"""Exact distributed evaluation: each rank scores its own padding-free shard, then counts are summed.

Also the `python -m dist_rnn.evaluate --checkpoint PATH` command, which scores a saved checkpoint.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn import distributed
from dist_rnn.amp import autocast, check_precision
from dist_rnn.checkpoint import TrainState, load_checkpoint, trained_config, trained_model
from dist_rnn.cli import ArgumentParser, add_dataclass_flags, prog, run_command
from dist_rnn.config import RuntimeOptions, check_limits, option
from dist_rnn.data import (
    InputView,
    Split,
    as_sequences,
    default_data_dir,
    eval_shard,
    load_dataset,
    trained_view,
)
from dist_rnn.distributed import DistEnv, all_reduce_sum, unwrap
from dist_rnn.errors import UserError
from dist_rnn.files import atomic_write_json


@torch.no_grad()
def evaluate(model: nn.Module, test: Split, env: DistEnv, batch_size: int, precision: str,
             view: Optional[InputView] = None, split: str = "test") -> dict[str, Any]:
    """Accuracy and mean (cross-entropy) loss over the whole split, each sample counted exactly
    once; images become sequences through `view` (default: rows). Keys are named for `split`
    (test_accuracy, or val_accuracy for the validation split).

    Runs the unwrapped module: evaluation needs no gradient sync, and going through DDP's forward
    on one rank only would leave the others behind. DistributedSampler would pad the shards to equal
    size (counting some samples twice); contiguous shards of unequal size need no padding.
    """
    module = unwrap(model)
    was_training = module.training
    module.eval()
    shard = eval_shard(len(test), env.rank, env.world_size)
    # correct, count, loss sum: one all-reduce; float64 counts stay exact far beyond 10k samples
    totals = torch.zeros(3, dtype=torch.float64, device=env.device)
    for start in range(shard.start, shard.stop, batch_size):
        batch = slice(start, min(start + batch_size, shard.stop))
        inputs, y = test.inputs(batch).to(env.device), test.labels[batch].to(env.device)
        x = (view or as_sequences)(inputs)
        with autocast(precision, env.device):
            logits = module(x)
        totals[0] += (logits.argmax(dim=1) == y).sum()
        totals[1] += len(y)
        totals[2] += F.cross_entropy(logits.float(), y, reduction="sum")
    module.train(was_training)
    correct, count, loss_sum = all_reduce_sum(totals, env).tolist()
    return {f"{split}_accuracy": correct / count, f"{split}_correct": int(correct),
            f"{split}_samples": int(count), f"{split}_loss": loss_sum / count}


@dataclass
class EvalConfig(RuntimeOptions):
    """Options of `python -m dist_rnn.evaluate`: the runtime options and these."""

    checkpoint: Optional[str] = option(None, "checkpoint file to evaluate (required)")
    data_dir: Optional[str] = option(None, "directory with the test files of the checkpoint's data set; default: the "
                                     "checkpoint's own --data-dir where it exists, else $DIST_RNN_DATA, else ./data")
    batch_size: int = option(1000, "per-process evaluation batch size", min=1)
    limit_test: Optional[int] = option(None, "score only the first N test samples", min=1)
    out: Optional[str] = option(None, "also write the result as JSON to this file")


def parse_eval_config(argv: Optional[list[str]] = None) -> EvalConfig:
    parser = ArgumentParser(
        prog=prog("dist_rnn.evaluate"),
        description="Score a dist_rnn checkpoint on its data set's test split: one process, or exact counts "
        "under `torchrun --nproc_per_node=N -m dist_rnn.evaluate ...`.")
    add_dataclass_flags(parser, EvalConfig)
    c = EvalConfig(**vars(parser.parse_args(argv)))
    if c.checkpoint is None:
        parser.error("--checkpoint is required")
    check_limits(c)
    return c


def evaluate_checkpoint(c: EvalConfig, env: DistEnv) -> dict[str, Any]:
    """Rebuild the model a checkpoint describes and score it; rank 0 prints (and writes --out)."""
    snapshot = distributed.main_first(env, lambda: load_checkpoint(Path(c.checkpoint)))
    config = trained_config(snapshot, c.checkpoint)
    distributed.main_first(env, lambda: check_precision(c.precision, env.device, config.cell))
    # The checkpoint's own data dir where it exists here (the files it was scored on), else the usual.
    trained_on = config.data_dir if config.data_dir and Path(config.data_dir).is_dir() else None
    try:
        data_dir = Path(c.data_dir or trained_on or default_data_dir(config.dataset))
    except UserError as e:  # say which checkpoint, and where its files were
        raise UserError(f"{c.checkpoint} was trained on files in {config.data_dir}, which are not here: {e.args[0]}") from None
    config = dataclasses.replace(config, data_dir=str(data_dir))
    state = TrainState.from_checkpoint(snapshot)
    # The test split read as training reads it, through the view the model was trained with (the
    # sequences' standardisation as fitted then, whatever this data's own statistics).
    _, test, info = distributed.main_first(env, lambda: load_dataset(config, test_only=True))
    view = trained_view(config, state.view)
    view.check_data(info, config.dataset)
    test, view = test.head(c.limit_test).to(env.device), view.to(env.device)
    model = trained_model(snapshot, config, input_size=view.input_size).to(env.device)
    result = {"checkpoint": str(c.checkpoint), "step": state.step, "world_size": env.world_size,
              "dataset": config.dataset, "inputs": view.describe(config.dataset),
              **evaluate(model, test, env, c.batch_size, c.precision, view)}
    if env.is_main:
        print(f"test accuracy {result['test_accuracy']:.4f} ({result['test_correct']}/{result['test_samples']} "
              f"samples), test loss {result['test_loss']:.4f}, checkpoint step {result['step']}, "
              f"{result['inputs']} (as trained)", flush=True)
        if c.out:
            atomic_write_json(Path(c.out), result)
    return result


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `python -m dist_rnn.evaluate`."""
    return run_command(prog("dist_rnn.evaluate"), lambda: parse_eval_config(argv), evaluate_checkpoint)


if __name__ == "__main__":
    sys.exit(main())
