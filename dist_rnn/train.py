"""Train an RNN classifier on MNIST-as-sequences. The same program runs as

    python -m dist_rnn.train ...                          # one process: CPU or one GPU
    torchrun --nproc_per_node=N -m dist_rnn.train ...     # DDP over N processes (and nodes)

The loop below is the whole algorithm; data, model, distribution, evaluation, checkpoints and
reporting live in their own modules.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn import __version__, checkpoint, distributed, tracking
from dist_rnn.amp import autocast, check_precision, grad_scaler
from dist_rnn.config import TrainConfig, parse_config, to_dict
from dist_rnn.data import SequenceView, Split, ShardedBatches, download_mnist, load_mnist, resolve_data_dir
from dist_rnn.distributed import DistEnv
from dist_rnn.errors import Stopped
from dist_rnn.evaluate import evaluate
from dist_rnn.files import ensure_writable_dir
from dist_rnn.log import RunLog
from dist_rnn.model import build_model
from dist_rnn.stop import StopRequest


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


def loss_function(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy, or (to compare, see docs/experiments.md) MSE between softmax outputs and one-hot targets."""
    if kind == "mse":
        return F.mse_loss(torch.softmax(logits.float(), dim=1), F.one_hot(y, logits.shape[1]).float())
    return F.cross_entropy(logits, y)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, c: TrainConfig, device: torch.device) -> torch.Tensor:
    """One optimizer step on this rank's part of the global batch; returns its (detached) mean loss.

    DDP averages the gradients over ranks during backward(), and every rank holds the same number of
    samples, so the update is the one a single process would make on the whole global batch.
    """
    with autocast(c.precision, device):
        loss = loss_function(model(x), y, c.loss)
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


@dataclass
class Position:
    """Where training stands: optimizer steps done, and the next batch (epoch, batch_in_epoch) to train."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_seconds: float = 0.0  # summed over every attempt of the run
    resumed_from_step: Optional[int] = None


def resume_snapshot(c: TrainConfig, env: DistEnv, log: RunLog) -> Optional[dict[str, Any]]:
    """The checkpoint to continue from (None: fresh start), checked against this run's config.

    Rank 0 chooses (every rank must resume from the same file); every rank then loads it. Nothing
    is written before this returns, so a refused resume leaves the run directory as it was.
    """
    path = distributed.on_main(env, lambda: checkpoint.choose_resume(c, log.info))
    if path is None:
        return None

    def load() -> dict[str, Any]:
        snapshot = checkpoint.load_checkpoint(Path(path))
        checkpoint.check_compatible(snapshot, c, path)
        return snapshot

    return distributed.main_first(env, load)  # a rank that cannot read it says so itself


def restore(snapshot: dict[str, Any], env: DistEnv, model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, c: TrainConfig) -> Position:
    """Load weights, optimizer, scaler and RNG state, before the model is wrapped in DDP."""
    checkpoint.load_weights(model, snapshot)
    optimizer.load_state_dict(snapshot["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = c.lr  # the command line's rate wins (it is the same when the command is)
    if snapshot["scaler"]:  # empty when saved by a run without fp16
        scaler.load_state_dict(snapshot["scaler"])
    rng = snapshot["rng"]
    if env.rank < len(rng):
        checkpoint.set_rng_state(rng[env.rank], env.device)
    # else: a rank the saved run did not have keeps its fresh seed (seed + rank): only its dropout
    # masks can differ from an uninterrupted run
    return Position(snapshot["step"], snapshot["epoch"], snapshot["batch_in_epoch"],
                    snapshot.get("train_seconds", 0.0), resumed_from_step=snapshot["step"])


def run(c: TrainConfig, env: DistEnv) -> dict[str, Any]:
    """Train and evaluate as configured; returns the results (also written by rank 0)."""
    check_precision(c.precision, env.device)
    c = resolve_config(c, env)
    out_dir = Path(c.out_dir)
    log = RunLog(out_dir, active=env.is_main)
    snapshot = resume_snapshot(c, env, log)

    # Rank 0 downloads first; then every rank reads the files (reading in parallel is safe).
    train_set, test_set = distributed.main_first(env, lambda: prepare_data(c))
    train_set, test_set = train_set.to(env.device), test_set.to(env.device)
    batches = ShardedBatches(len(train_set), c.batch_size, env.rank, env.world_size, c.seed)
    distributed.on_main(env, lambda: ensure_writable_dir(out_dir))  # before any training time is spent

    view = SequenceView.from_config(c, train_set.images, snapshot).to(env.device)  # rows, columns or pixels
    torch.manual_seed(c.seed)  # the same initial weights on every rank
    model = build_model(c, input_size=view.input_size).to(env.device)
    torch.manual_seed(c.seed + env.rank)  # but each rank its own dropout masks
    optimizer = build_optimizer(c, model)
    scaler = grad_scaler(c.precision, env.device)
    pos = restore(snapshot, env, model, optimizer, scaler, c) if snapshot else Position()
    ddp_model = distributed.wrap(model, env)  # after loading: DDP starts from the restored weights

    # Every check has passed: from here on the run directory may change.
    if env.is_main:
        if c.overwrite:
            checkpoint.remove_all(out_dir)
        log.start(keep_until_step=pos.step if snapshot else None)
    log.write_json("config.json", to_dict(c))
    # The wandb run continues across resumes: its id travels in the checkpoints (rank 0 saves them).
    run_id = (snapshot or {}).get("wandb_run_id") or tracking.new_run_id()
    log.open_trackers(lambda: tracking.open_trackers(c, out_dir, run_id, log.info))

    last_eval, last_saved_step = None, pos.step if snapshot else None

    def save() -> None:
        """Checkpoint the current position, once per step (collective: every rank calls it)."""
        nonlocal last_saved_step
        if last_saved_step == pos.step:
            return
        info = checkpoint.save_checkpoint(
            env, out_dir, c.keep_last, model=model, optimizer=optimizer, scaler=scaler, step=pos.step,
            epoch=pos.epoch, batch_in_epoch=pos.batch_in_epoch, config=to_dict(c),
            extra={"train_seconds": pos.train_seconds, "wandb_run_id": run_id,
                   "sequence_permutation": None if view.permutation is None else view.permutation.tolist()})
        last_saved_step = pos.step
        if info:
            log.event("checkpoint", step=pos.step, **info)
            log.info(f"saved {info['path']} ({info['bytes'] / 1e6:.1f} MB in {info['seconds']:.2f} s)")

    def score() -> dict[str, Any]:
        """Exact test-set evaluation of the current weights, tagged with the step."""
        return {"step": pos.step, **evaluate(ddp_model, test_set, env, c.eval_batch_size, c.precision, view)}

    steps_per_epoch = batches.steps_per_epoch
    total_steps = c.epochs * steps_per_epoch if c.max_steps is None else min(c.max_steps, c.epochs * steps_per_epoch)
    backend = f", {env.backend}" if env.is_distributed else ""
    log.info(f"dist_rnn {__version__}: {env.world_size} process(es) on {env.device.type}{backend} "
             f"({torch.get_num_threads()} CPU threads each), "
             f"global batch {c.batch_size} ({batches.local_batch} per process), {steps_per_epoch} steps/epoch, "
             f"{total_steps} steps, {len(train_set)} train / {len(test_set)} test samples -> {out_dir}")
    if snapshot:
        log.info(f"resumed from step {pos.step} (epoch {pos.epoch + 1}, batch {pos.batch_in_epoch}/"
                 f"{steps_per_epoch}, saved by {snapshot['world_size']} process(es))")
    log.start_progress(total_steps, done=pos.step)
    stop = StopRequest(env)  # SIGTERM / SIGINT / SIGUSR1: checkpoint and leave at a step boundary
    stopped: Optional[int] = None
    try:
        while pos.step < total_steps and stopped is None:
            indices = batches.epoch(pos.epoch).to(env.device)  # the same order at any world size
            synchronize(env.device)
            epoch_start = interval_start = time.perf_counter()
            interval_steps = 0
            while pos.batch_in_epoch < steps_per_epoch and pos.step < total_steps:
                idx = indices[pos.batch_in_epoch]
                loss = train_step(ddp_model, optimizer, scaler, view(train_set.images[idx]),
                                  train_set.labels[idx], c, env.device)
                pos.step += 1
                pos.batch_in_epoch += 1
                interval_steps += 1
                log.advance()
                if pos.step % c.log_every == 0:  # the only sync with the device inside the epoch (but scoring)
                    loss_value = global_mean(loss, env)
                    rate = interval_steps * c.batch_size / (time.perf_counter() - interval_start)
                    log.info(f"Epoch [{pos.epoch + 1}/{c.epochs}], Step [{pos.batch_in_epoch}/{steps_per_epoch}], "
                             f"Loss: {loss_value:.4f}, {rate:.0f} samples/s")
                    log.event("train", step=pos.step, epoch=pos.epoch + 1, loss=loss_value,
                              lr=optimizer.param_groups[0]["lr"], samples_per_s=rate)
                    log.show(loss=f"{loss_value:.4f}", samples_per_s=f"{rate:.0f}")
                    interval_start, interval_steps = time.perf_counter(), 0
                if c.eval_every and pos.step % c.eval_every == 0 and pos.batch_in_epoch < steps_per_epoch:
                    synchronize(env.device)  # queued training work is training time
                    paused = time.perf_counter()
                    log.event("eval", epoch=pos.epoch + 1, **score())  # a learning-curve point
                    spent = time.perf_counter() - paused  # scoring is not training: move the clocks past it
                    epoch_start, interval_start = epoch_start + spent, interval_start + spent
                if c.save_every and pos.step % c.save_every == 0 and pos.batch_in_epoch < steps_per_epoch:
                    save()  # mid-epoch; the epoch's end is saved below, after its evaluation
                stopped = stop.agreed()  # every rank gets the same answer, so all stop at this step
                if stopped is not None:
                    break
            synchronize(env.device)
            pos.train_seconds += time.perf_counter() - epoch_start
            if stopped is not None:
                break  # the epoch's evaluation runs after the resume, when its last batch is done

            last_eval = score()
            log.info(f"Epoch [{pos.epoch + 1}/{c.epochs}] test accuracy {last_eval['test_accuracy']:.4f} "
                     f"({last_eval['test_correct']}/{last_eval['test_samples']}), "
                     f"test loss {last_eval['test_loss']:.4f}")
            log.event("eval", epoch=pos.epoch + 1, **last_eval)
            if pos.batch_in_epoch == steps_per_epoch:  # epoch complete: a resume starts the next one
                pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
            save()
        stop.close()  # from here a signal acts as usual: the evaluation and saves below are short

        if stopped is not None:
            save()
            name = signal.Signals(stopped).name
            log.event("stop", step=pos.step, signal=name)
            log.info(f"stopped by {name} at step {pos.step} of {total_steps}, checkpoint saved: "
                     "run the same command again to resume")
            distributed.barrier(env)
            raise Stopped(stopped)

        if last_eval is None:  # nothing left to train (--max-steps 0, or resuming a finished run)
            last_eval = score()
            log.event("eval", epoch=pos.epoch, **last_eval)
        save()  # the end of the run (a no-op when the epoch's end already saved this step)

        results = {
            "test_accuracy": last_eval["test_accuracy"],
            "test_samples": last_eval["test_samples"],
            "test_loss": last_eval["test_loss"],
            "world_size": env.world_size,
            "global_batch_size": c.batch_size,
            "epochs": c.epochs,
            "steps": pos.step,
            "train_seconds": pos.train_seconds,
            "train_samples_per_s": pos.step * c.batch_size / pos.train_seconds if pos.train_seconds else None,
            "precision": c.precision,
            "device": env.device.type,
            "checkpoint": str(checkpoint.checkpoint_dir(out_dir) / f"step-{pos.step}.pt"),
            "resumed_from_step": pos.resumed_from_step,
            "dist_rnn_version": __version__,
        }
        log.write_json("results.json", results)
        log.summary(results)
        log.info(f"test accuracy {results['test_accuracy']:.4f} on {results['test_samples']} samples after "
                 f"{pos.step} steps ({pos.train_seconds:.1f} s training); results in {out_dir / 'results.json'}")
        # Leave together: rank 0 may still be writing; the others wait for it before teardown.
        distributed.barrier(env)
        return results
    finally:
        stop.close()
        log.close()  # the bar, and the trackers' files completed


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `python -m dist_rnn.train` (and of torchrun's workers)."""
    return distributed.run_command("dist_rnn.train", lambda: parse_config(argv), run)


if __name__ == "__main__":
    sys.exit(main())
