"""Exact distributed evaluation: each rank scores its own padding-free shard, then counts are summed.

Also the `python -m dist_rnn.evaluate --checkpoint PATH` command, which scores a saved checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import io
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
from dist_rnn.files import atomic_write, atomic_write_json
from dist_rnn.model import Ensemble


@torch.no_grad()
def evaluate(model: nn.Module, test: Split, env: DistEnv, batch_size: int, precision: str,
             view: Optional[InputView] = None, split: str = "test", predictions: bool = False) -> dict[str, Any]:
    """Accuracy, mean (cross-entropy) loss and the confusion matrix (rows: true class, columns:
    predicted) over the whole split, each sample counted exactly once; with `predictions`, each
    sample's predicted class and its probability too (on every rank). Inputs go through `view`
    (default: image rows). Keys are named for `split` (test_accuracy, or val_accuracy).

    Runs the unwrapped module: evaluation needs no gradient sync, and going through DDP's forward
    on one rank only would leave the others behind. DistributedSampler would pad the shards to equal
    size (counting some samples twice); contiguous shards of unequal size need no padding.
    """
    module = unwrap(model)
    was_training = module.training
    module.eval()
    shard = eval_shard(len(test), env.rank, env.world_size)
    k = module.num_classes
    # the loss sum and the confusion counts: one all-reduce; float64 counts stay exact far beyond 10k samples
    totals = torch.zeros(1 + k * k, dtype=torch.float64, device=env.device)
    confusion = totals[1:].view(k, k)
    # each sample's class and probability, in its shard's place (zero elsewhere: the sum gathers them)
    answers = torch.zeros(2, len(test) if predictions else 0, dtype=torch.float64, device=env.device)
    for start in range(shard.start, shard.stop, batch_size):
        batch = slice(start, min(start + batch_size, shard.stop))
        inputs, y = test.inputs(batch).to(env.device), test.labels[batch].to(env.device)
        x = (view or as_sequences)(inputs)
        with autocast(precision, env.device):
            logits = module(x)
        predicted = logits.argmax(dim=1)
        confusion.index_put_((y, predicted), torch.ones_like(y, dtype=torch.float64), accumulate=True)
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum")
        if predictions:
            probability = logits.float().softmax(1).gather(1, predicted[:, None])[:, 0]
            answers[0, batch], answers[1, batch] = predicted.double(), probability.double()
    module.train(was_training)
    all_reduce_sum(totals, env)
    count, correct = confusion.sum().item(), confusion.diagonal().sum().item()
    result = {f"{split}_accuracy": correct / count, f"{split}_correct": int(correct),
              f"{split}_samples": int(count), f"{split}_loss": totals[0].item() / count,
              f"{split}_confusion": confusion.long().tolist()}
    if predictions:
        all_reduce_sum(answers, env)
        result[f"{split}_predicted"], result[f"{split}_probability"] = answers[0].long().tolist(), answers[1].tolist()
    return result


def per_class(confusion: list[list[int]], classes: list[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows: true class),
    and their macro average; a class never predicted (or absent) has precision (recall) 0."""
    matrix = torch.tensor(confusion, dtype=torch.float64)
    hits, predicted, support = matrix.diagonal(), matrix.sum(0), matrix.sum(1)
    precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, hits / support.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-300), 0.0)
    rows = {name: {"precision": p, "recall": r, "f1": f, "support": int(n)}
            for name, p, r, f, n in zip(classes, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist())}
    return {"classes": rows, "macro_f1": f1.mean().item()}


def per_class_table(metrics: dict[str, Any]) -> str:
    """The per-class metrics as aligned lines, for a terminal."""
    width = max(5, *(len(name) for name in metrics["classes"]))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    lines += [f"{name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {m['support']:7d}"
              for name, m in metrics["classes"].items()]
    return "\n".join(lines + [f"macro F1 {metrics['macro_f1']:.4f}"])


@dataclass
class EvalConfig(RuntimeOptions):
    """Options of `python -m dist_rnn.evaluate`: the runtime options and these."""

    checkpoint: Optional[list[str]] = option(None, "checkpoint file to evaluate (required); repeated (models of one "
                                             "data set), an ensemble: their probabilities averaged")
    dataset: Optional[str] = option(None, "score this data set's test split instead of the checkpoint's: anything "
                                    "train's --dataset reads (a UCR/UEA name, X_TRAIN.ts, train.parquet, a saved "
                                    "DatasetDict), of the model's classes and channels")
    data_dir: Optional[str] = option(None, "directory with the test files of the checkpoint's data set; default: the "
                                     "checkpoint's own --data-dir where it exists, else $DIST_RNN_DATA, else ./data")
    batch_size: int = option(1000, "per-process evaluation batch size", min=1)
    limit_test: Optional[int] = option(None, "score only the first N test samples", min=1)
    out: Optional[str] = option(None, "also write the result as JSON to this file (per-class metrics and the "
                                "confusion matrix included)")
    predictions: Optional[str] = option(None, "also write each test sample's true and predicted class and the "
                                        "predicted class's probability to this CSV file")


def parse_eval_config(argv: Optional[list[str]] = None) -> EvalConfig:
    parser = ArgumentParser(
        prog=prog("dist_rnn.evaluate"),
        description="Score a dist_rnn checkpoint (or an ensemble of several) on its data set's test split: "
        "accuracy, loss, per-class precision, recall and F1, the confusion matrix; one process, or exact counts "
        "under `torchrun --nproc_per_node=N -m dist_rnn.evaluate ...`.")
    add_dataclass_flags(parser, EvalConfig)
    c = EvalConfig(**vars(parser.parse_args(argv)))
    if c.checkpoint is None:
        parser.error("--checkpoint is required")
    check_limits(c)
    return c


def evaluate_checkpoint(c: EvalConfig, env: DistEnv) -> dict[str, Any]:
    """Rebuild the model each checkpoint describes and score them (as one ensemble when several);
    rank 0 prints (and writes --out and --predictions)."""
    snapshots = [distributed.main_first(env, lambda p=p: load_checkpoint(Path(p))) for p in c.checkpoint]
    configs = [trained_config(snapshot, path) for snapshot, path in zip(snapshots, c.checkpoint)]
    states = [TrainState.from_checkpoint(snapshot) for snapshot in snapshots]
    config = configs[0]
    for path, other in zip(c.checkpoint[1:], configs[1:]):
        if other.dataset != config.dataset:
            raise UserError(f"{path} was trained on {other.dataset}, {c.checkpoint[0]} on {config.dataset}: an "
                            "ensemble's models share one data set")
    for member in configs:
        distributed.main_first(env, lambda m=member: check_precision(c.precision, env.device, m.cell))
    # The checkpoint's own data dir where it exists here (the files it was scored on), else the usual.
    trained_on = config.data_dir if config.data_dir and Path(config.data_dir).is_dir() and not c.dataset else None
    dataset = c.dataset or config.dataset
    try:
        data_dir = Path(c.data_dir or trained_on or default_data_dir(dataset))
    except UserError as e:  # say which checkpoint, and where its files were
        if c.dataset:
            raise
        raise UserError(f"{c.checkpoint[0]} was trained on files in {config.data_dir}, which are not here: "
                        f"{e.args[0]}") from None
    # The test split read as training reads it, through the view each model was trained with (the
    # sequences' standardisation as fitted then, whatever this data's own statistics).
    try:
        _, _, test, info = distributed.main_first(env, lambda: load_dataset(
            dataclasses.replace(config, dataset=dataset, data_dir=str(data_dir)), test_only=True))
    except UserError as e:
        if c.dataset:
            raise
        raise UserError(f"{e.args[0]} (the data {c.checkpoint[0]} was trained on; --dataset names other data "
                        "to score)") from None
    if test is None:
        raise UserError(f"`dataset` {dataset}: it has no test split to score (--dataset names data that has one)")
    test = test.head(c.limit_test).to(env.device)
    members = []
    for snapshot, member, state in zip(snapshots, configs, states):
        view = trained_view(member, state.view)
        view.check_data(info, dataset)
        members.append((view.to(env.device), trained_model(snapshot, member, input_size=view.input_size).to(env.device)))
    view, model = members[0] if len(members) == 1 else (lambda inputs: inputs, Ensemble(members))
    scores = evaluate(model, test, env, c.batch_size, c.precision, view, predictions=c.predictions is not None)
    classes = [str(name) for name in members[0][0].classes]
    metrics = per_class(scores["test_confusion"], classes)
    result = {"checkpoint": c.checkpoint[0] if len(c.checkpoint) == 1 else c.checkpoint,
              "step": states[0].step, "world_size": env.world_size,
              "dataset": dataset, "inputs": members[0][0].describe(dataset),
              **{k: v for k, v in scores.items() if k not in ("test_predicted", "test_probability")},
              "test_per_class": metrics, "classes": classes}
    if env.is_main:
        what = f"checkpoint step {result['step']}" if len(members) == 1 else f"an ensemble of {len(members)} models"
        print(f"test accuracy {result['test_accuracy']:.4f} ({result['test_correct']}/{result['test_samples']} "
              f"samples), test loss {result['test_loss']:.4f}, {what}, {result['inputs']} (as trained)", flush=True)
        print(per_class_table(metrics), flush=True)
        if c.out:
            atomic_write_json(Path(c.out), result)
        if c.predictions:
            write_predictions(Path(c.predictions), test.labels.tolist(), scores, classes)
    return result


def write_predictions(path: Path, labels: list[int], scores: dict[str, Any], classes: list[str]) -> None:
    """One CSV row per test sample, in the split's order: its index, true and predicted class, probability."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # (quotes a class name holding a comma)
    writer.writerow(["index", "true", "predicted", "probability"])
    writer.writerows([i, classes[t], classes[p], f"{q:.6f}"]
                     for i, (t, p, q) in enumerate(zip(labels, scores["test_predicted"], scores["test_probability"])))
    atomic_write(path, lambda fh: fh.write(out.getvalue().encode()))


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `python -m dist_rnn.evaluate`."""
    return run_command(prog("dist_rnn.evaluate"), lambda: parse_eval_config(argv), evaluate_checkpoint)


if __name__ == "__main__":
    sys.exit(main())
