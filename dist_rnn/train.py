"""Train an RNN classifier on MNIST-as-sequences. The same program runs as

    python -m dist_rnn.train ...                          # one process: CPU or one GPU
    torchrun --nproc_per_node=N -m dist_rnn.train ...     # DDP over N processes (and nodes)

The loop below is the whole algorithm; data, model, distribution, evaluation, checkpoints and
reporting live in their own modules.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn import __version__, distributed
from dist_rnn.amp import autocast, check_precision, grad_scaler
from dist_rnn.checkpoint import save_checkpoint
from dist_rnn.config import TrainConfig, parse_config, to_dict
from dist_rnn.data import NUM_CLASSES, Split, ShardedBatches, as_sequences, download_mnist, load_mnist, resolve_data_dir
from dist_rnn.distributed import DistEnv
from dist_rnn.errors import UserError
from dist_rnn.evaluate import evaluate
from dist_rnn.log import RunLog
from dist_rnn.model import RNNClassifier


def build_model(c: TrainConfig, input_size: int) -> RNNClassifier:
    return RNNClassifier(input_size, c.hidden_size, c.num_layers, NUM_CLASSES, c.cell,
                         c.bidirectional, c.dropout, c.readout)


def build_optimizer(c: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if c.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum)
    return torch.optim.Adam(model.parameters(), lr=c.lr)


def prepare_data(c: TrainConfig) -> tuple[Split, Split]:
    """Download if asked and needed, then read and verify the four files."""
    data_dir = Path(c.data_dir)
    if c.download:
        download_mnist(data_dir)
    train, test = load_mnist(data_dir)
    return train.head(c.limit_train), test.head(c.limit_test)


def resolve_config(c: TrainConfig, env: DistEnv) -> TrainConfig:
    """Fill in what the flags left open: data dir, device actually used, and one out-dir for all ranks."""
    out_dir = c.out_dir or f"runs/{c.name or c.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Each rank would read its own clock: take rank 0's name so every rank agrees.
    out_dir = distributed.broadcast_from_main(out_dir, env)
    return dataclasses.replace(c, out_dir=out_dir, data_dir=str(resolve_data_dir(c.data_dir)),
                               device=env.device.type)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, c: TrainConfig, device: torch.device) -> torch.Tensor:
    """One optimizer step on this rank's part of the global batch; returns its (detached) mean loss.

    DDP averages the gradients over ranks during backward(), and every rank holds the same number of
    samples, so the update is the one a single process would make on the whole global batch.
    """
    with autocast(c.precision, device):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if c.grad_clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def global_mean(value: torch.Tensor, env: DistEnv) -> float:
    """Mean of a per-rank scalar over ranks: with equal local batches, the global-batch mean."""
    return distributed.all_reduce_sum(value.float().clone(), env).item() / env.world_size


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(c: TrainConfig, env: DistEnv) -> dict[str, Any]:
    """Train and evaluate as configured; returns the results (also written by rank 0)."""
    check_precision(c.precision, env.device)
    c = resolve_config(c, env)
    out_dir = Path(c.out_dir)
    log = RunLog(out_dir, active=env.is_main)
    log.write_json("config.json", to_dict(c))

    # Rank 0 downloads first; then every rank reads the files (reading in parallel is safe).
    train_set, test_set = distributed.main_first(env, lambda: prepare_data(c))
    train_set, test_set = train_set.to(env.device), test_set.to(env.device)
    batches = ShardedBatches(len(train_set), c.batch_size, env.rank, env.world_size, c.seed)

    torch.manual_seed(c.seed)  # the same initial weights on every rank
    model = build_model(c, input_size=train_set.images.shape[2]).to(env.device)
    torch.manual_seed(c.seed + env.rank)  # but each rank its own dropout masks
    ddp_model = distributed.wrap(model, env)
    optimizer = build_optimizer(c, model)
    scaler = grad_scaler(c.precision, env.device)

    steps_per_epoch = batches.steps_per_epoch
    total_steps = c.epochs * steps_per_epoch if c.max_steps is None else min(c.max_steps, c.epochs * steps_per_epoch)
    log.info(f"dist_rnn {__version__}: {env.world_size} process(es) on {env.device.type}, "
             f"global batch {c.batch_size} ({batches.local_batch} per process), {steps_per_epoch} steps/epoch, "
             f"{total_steps} steps, {len(train_set)} train / {len(test_set)} test samples -> {out_dir}")
    log.start_progress(total_steps)

    step, train_seconds, last_eval = 0, 0.0, None
    for epoch in range(c.epochs):
        if step >= total_steps:
            break
        indices = batches.epoch(epoch).to(env.device)
        synchronize(env.device)
        epoch_start = interval_start = time.perf_counter()
        interval_steps = 0
        for k in range(steps_per_epoch):
            if step >= total_steps:
                break
            idx = indices[k]
            loss = train_step(ddp_model, optimizer, scaler, as_sequences(train_set.images[idx]),
                              train_set.labels[idx], c, env.device)
            step += 1
            interval_steps += 1
            log.advance()
            if step % c.log_every == 0:  # the only host sync inside the epoch
                loss_value = global_mean(loss, env)
                rate = interval_steps * c.batch_size / (time.perf_counter() - interval_start)
                log.info(f"Epoch [{epoch + 1}/{c.epochs}], Step [{k + 1}/{steps_per_epoch}], "
                         f"Loss: {loss_value:.4f}, {rate:.0f} samples/s")
                log.event("train", step=step, epoch=epoch + 1, loss=loss_value,
                          lr=optimizer.param_groups[0]["lr"], samples_per_s=rate)
                interval_start, interval_steps = time.perf_counter(), 0
        synchronize(env.device)
        train_seconds += time.perf_counter() - epoch_start

        last_eval = {"step": step, **evaluate(ddp_model, test_set, env, c.eval_batch_size, c.precision)}
        log.info(f"Epoch [{epoch + 1}/{c.epochs}] test accuracy {last_eval['test_accuracy']:.4f} "
                 f"({last_eval['test_correct']}/{last_eval['test_samples']}), test loss {last_eval['test_loss']:.4f}")
        log.event("eval", epoch=epoch + 1, **last_eval)
    log.close()

    if last_eval is None or last_eval["step"] != step:  # --max-steps 0: score the initial model
        last_eval = {"step": step, **evaluate(ddp_model, test_set, env, c.eval_batch_size, c.precision)}
        log.event("eval", epoch=0, **last_eval)

    checkpoint = save_checkpoint(out_dir, model, to_dict(c), step) if env.is_main else None
    results = {
        "test_accuracy": last_eval["test_accuracy"],
        "test_samples": last_eval["test_samples"],
        "test_loss": last_eval["test_loss"],
        "world_size": env.world_size,
        "global_batch_size": c.batch_size,
        "epochs": c.epochs,
        "steps": step,
        "train_seconds": train_seconds,
        "train_samples_per_s": step * c.batch_size / train_seconds if train_seconds else None,
        "precision": c.precision,
        "device": env.device.type,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "resumed_from_step": None,
        "dist_rnn_version": __version__,
    }
    log.write_json("results.json", results)
    log.info(f"test accuracy {results['test_accuracy']:.4f} on {results['test_samples']} samples after "
             f"{step} steps ({train_seconds:.1f} s training); results in {out_dir / 'results.json'}")
    # Leave together: a rank that tears down its process group while rank 0 is still writing
    # can abort inside gloo ("terminate called without an active exception", seen here).
    distributed.barrier(env)
    return results


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: run, turning bad input into one line on stderr (rank 0 only) and exit status 2."""
    env: Optional[DistEnv] = None
    try:
        config = parse_config(argv)
        env = distributed.setup(config.device)
        run(config, env)
    except UserError as e:
        if distributed.env_rank() == 0:
            print(f"dist_rnn.train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if env is not None:
            distributed.teardown(env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
