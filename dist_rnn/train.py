"""Train an RNN classifier on MNIST-as-sequences. The same program runs as

    python -m dist_rnn.train ...                          # one process: CPU or one GPU
    torchrun --nproc_per_node=N -m dist_rnn.train ...     # DDP over N processes (and nodes)

`Trainer` builds everything a run needs once (data, sampler, model, optimizer, resume), and its
`train()` is the whole algorithm; data, model, distribution, evaluation, checkpoints and reporting
live in their own modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from dist_rnn import __version__, distributed, tracking
from dist_rnn.amp import check_precision, grad_scaler
from dist_rnn.checkpoint import (
    BEST_NAME,
    CheckpointManager,
    TrainState,
    checkpoint_dir,
    load_checkpoint,
    load_weights,
    set_rng_state,
)
from dist_rnn.cli import parse_config, prog, run_command
from dist_rnn.config import TrainConfig, check_validation_needs, to_dict
from dist_rnn.data import (
    ArrowSplit,
    DataInfo,
    GlobalBatchSampler,
    Split,
    feeder,
    is_path,
    load_dataset,
    resolve_data_dir,
    validation_split,
)
from dist_rnn.distributed import DistEnv
from dist_rnn.errors import Stopped, UserError
from dist_rnn.evaluate import evaluate, per_class
from dist_rnn.lock import RunLock
from dist_rnn.log import RunLog
from dist_rnn.model import build_model, count_parameters
from dist_rnn.schedule import Schedule, schedules_the_rate
from dist_rnn.step import EagerStep, GraphedStep, graphs_refusal
from dist_rnn.stop import PRUNE, StopRequest


def build_optimizer(c: TrainConfig, model: nn.Module, graphed: bool) -> torch.optim.Optimizer:
    """The optimizer. On CUDA the fused Adam (the fastest, and with fp16 the one that keeps GradScaler's inf
    flag on the device), capturable when graphed; on the CPU the plain (foreach) Adam
    (docs/design-notes.md, 'Which Adam')."""
    if c.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    adam = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
    mode = dict(capturable=True, fused=True) if graphed else \
        dict(fused=True) if next(model.parameters()).device.type == "cuda" else {}
    return adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay, **mode)


def keep_optimizer_mode(optimizer: torch.optim.Optimizer) -> None:
    """After load_state_dict, which brings back the saved run's param-group settings: this run's
    implementation again (a checkpoint of an eager run resumed with CUDA graphs needs the capturable
    Adam, and the other way round), with Adam's step counts where that implementation keeps them."""
    modes = {key: optimizer.defaults[key] for key in ("capturable", "fused", "foreach") if key in optimizer.defaults}
    for group in optimizer.param_groups:
        group.update(modes)
    on_device = bool(modes.get("capturable") or modes.get("fused"))
    for param, state in optimizer.state.items():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].to(device=param.device if on_device else "cpu", dtype=torch.float32)


# Asked after each complete epoch's validation score (epoch count, the score): stop, pruned?
Pruner = Callable[[int, dict[str, Any]], bool]

# What a data source returns: (train, validation or None, test or None, what a model of the data
# must know: its DataInfo). fit() hands the Trainer one for data given in Python.
DataSource = Callable[[], "tuple[Split | ArrowSplit, Optional[Split], Optional[Split], DataInfo]"]


def config_source(c: TrainConfig) -> DataSource:
    """The data the config names (`dataset`, `data_dir`), as the command reads it."""
    return lambda: load_dataset(c)


def prepare_data(c: TrainConfig, source: DataSource) -> tuple[Split, Optional[Split], Optional[Split],
                                                               Optional[torch.Tensor], DataInfo]:
    """Read and verify the data, and hold out the validation split (--val-size) unless the source
    gives one: (train, validation or None, test or None, the training file's indices train keeps,
    what a model of the data must know)."""
    train, val, test, info = source()
    train, test = train.head(c.limit_train), None if test is None else test.head(c.limit_test)
    if val is not None and (c.val_size or c.val_folds):
        raise UserError("the data comes with its own validation split: leave `val_size` and `val_folds` at 0")
    if val is not None or not (c.val_size or c.val_folds):
        check_validation_needs(c, val is not None)
        return train, val, test, None, info
    train, val, kept = validation_split(train, c.val_size, c.seed, c.val_folds, c.val_fold)
    return train, val, test, kept, info


def bucketing(c: TrainConfig, train: "Split | ArrowSplit", info: DataInfo) -> tuple[Optional[torch.Tensor], int]:
    """(each training sequence's length, --bucket-batches) for the sampler; one line when the data
    has no lengths to group by."""
    if not c.bucket_batches:
        return None, 0
    if not info.variable_length:
        raise UserError(f"`bucket_batches` groups sequences by length, and every sequence of `dataset` {c.dataset} "
                        "has the same length: leave it at 0")
    return train.sequence_lengths(), c.bucket_batches


def claim_new_dir(path: str) -> str:
    """Make and return path, or path-2, path-3, ...: the first name no directory had (runs started
    in the same second each get their own). One that cannot be made is returned as it is: the run
    directory's own check then says why, in one line."""
    candidate, n = path, 1
    while True:
        try:
            Path(candidate).mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}-{n}"
        except OSError:
            return candidate


def resolve_config(c: TrainConfig, env: DistEnv) -> TrainConfig:
    """Fill in what the flags left open: data dir (absolute), device actually used, and one out-dir for
    all ranks."""
    default = f"runs/{c.name or c.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Rank 0 claims a new directory (each rank would read its own clock) and every rank takes its name.
    out_dir = c.out_dir or distributed.on_main(env, lambda: claim_new_dir(default))
    # The data dir (and a data set given as a path) as absolute paths: the checkpoints record them, and
    # evaluate/predict read them from wherever they are run.
    dataset = str(Path(c.dataset).absolute()) if is_path(c.dataset) else c.dataset
    return dataclasses.replace(c, out_dir=out_dir, dataset=dataset,
                               data_dir=str(resolve_data_dir(c.data_dir).absolute()), device=env.device.type)


def scalars(result: dict[str, Any]) -> dict[str, Any]:
    """A score without its lists (the confusion matrix): what metrics.jsonl and the trackers get."""
    return {k: v for k, v in result.items() if not isinstance(v, list)}


def class_weights(c: TrainConfig, labels: torch.Tensor, num_classes: int, device: torch.device
                  ) -> Optional[torch.Tensor]:
    """--class-weights balanced: n / (classes x count) per class of the training split, the classes it
    holds (so the mean weight of a sample is 1); None: unweighted."""
    if c.class_weights == "none":
        return None
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    weight = torch.where(counts > 0, len(labels) / (int((counts > 0).sum()) * counts.clamp(min=1)), 0.0)
    return weight.float().to(device)


def optimizer_states(c: TrainConfig) -> int:
    """Tensors the optimizer keeps per parameter: Adam's two moments, SGD's momentum (or none)."""
    return 2 if c.optimizer in ("adam", "adamw") else (1 if c.momentum else 0)


def check_memory(parameters: int, c: TrainConfig, env: DistEnv) -> None:
    """Refuse, before allocating it, a model whose weights, gradients and optimizer state alone
    exceed the memory this process has free (activations come on top: this is a floor)."""
    free = distributed.free_memory_per_process(env.device)
    copies = 2 + optimizer_states(c) + (1 if env.is_distributed else 0)  # weights, gradients, state, DDP's buckets
    needed = parameters * 4 * copies
    if free is not None and needed > free:
        raise UserError(f"the model has {parameters:,} parameters: its weights, gradients and {c.optimizer} state "
                        f"alone need {needed / 2 ** 30:.1f} GiB, more than the {free / 2 ** 30:.1f} GiB free for "
                        f"this process on {env.device.type}; use a smaller `hidden_size` or `num_layers`")


def global_mean(value: torch.Tensor, env: DistEnv) -> float:
    """Mean of a per-rank scalar over ranks: with equal local batches, the global-batch mean."""
    return distributed.all_reduce_sum(value.float().clone(), env).item() / env.world_size


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are true."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_seconds(seconds: float) -> str:
    """1:02:03 / 2:03: wall time for a log line."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Clock:
    """Training time of one epoch segment, and samples/s since the last report; evaluations in
    between are not training, so `paused()` moves both clocks past them."""

    def __init__(self, device: torch.device):
        self.device = device
        synchronize(device)
        self.start = self.interval_start = time.perf_counter()
        self.interval_steps = 0

    def rate(self, batch_size: int) -> float:
        """Samples/s of the interval since restart_interval() (or the start)."""
        return self.interval_steps * batch_size / (time.perf_counter() - self.interval_start)

    def restart_interval(self) -> None:
        """A new interval from now: called once a report's own work is done, so that its host time
        (formatting, files, trackers) is not counted as the next interval's training."""
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        synchronize(self.device)  # queued training work is training time
        paused = time.perf_counter()
        yield
        spent = time.perf_counter() - paused
        self.start, self.interval_start = self.start + spent, self.interval_start + spent

    def seconds(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.start


class Trainer:
    """One training run: construction builds everything and restores a checkpoint if there is one
    to continue; train() runs it; train_step (dist_rnn/step.py) is one optimizer step on
    fixed-shape tensors."""

    def __init__(self, c: TrainConfig, env: DistEnv, source: Optional[DataSource] = None,
                 command: Optional[str] = None, pruner: Optional[Pruner] = None):
        """`pruner`: called with each complete epoch's validation score (every rank; global rank 0's
        answer counts): True stops every rank there, the run pruned (a search's trial)."""
        # Every rank asks its own CPU or GPU (nodes may differ); all refuse together if one cannot.
        distributed.main_first(env, lambda: check_precision(c.precision, env.device, c.cell))
        self.out_dir_chosen = c.out_dir is not None  # else a new timestamped directory: a rerun starts afresh
        self.c = c = resolve_config(c, env)
        self.env, self.out_dir = env, Path(c.out_dir)
        self.pruner = pruner
        self.source = source or config_source(c)
        self.command = command or command_line()  # how the run was started: the lock and the log say it
        self.log = RunLog(self.out_dir, active=env.is_main)
        # One run per out-dir: taken before anything there is read or written, let go however the run
        # ends (train()'s finally, or here when building fails).
        self.lock = RunLock(self.out_dir, self.command, made=not self.out_dir_chosen)
        distributed.on_main(env, lambda: self.lock.acquire(self.log.info))
        try:
            self._build()
        except BaseException:
            self.lock.release()  # with the directory, when the lock made it and nothing else is there
            raise

    def _build(self) -> None:
        """Everything the run needs, and the checkpoint it continues from (if any)."""
        c, env = self.c, self.env
        self.checkpoints = CheckpointManager(self.out_dir, c.keep_last, c.save_every)
        snapshot = self._resume_snapshot()  # nothing is written before this: a refusal leaves no trace
        # Rank 0 downloads first; then every rank reads the files (reading in parallel is safe).
        train_set, val_set, test_set, kept, info = distributed.main_first(env, lambda: prepare_data(c, self.source))
        self.test_set = None if test_set is None else test_set.to(env.device)
        self.val_set = None if val_set is None else val_set.to(env.device)
        self.watched = "val" if val_set is not None else "test" if test_set is not None else None  # what epochs score
        if val_set is not None and len(train_set) < c.batch_size:
            held_by = (f"`val_folds`={c.val_folds} (fold {c.val_fold})" if c.val_folds
                       else f"`val_size`={c.val_size:g}" if c.val_size else "the training data")
            raise UserError(f"{held_by} leaves {len(train_set)} training samples, fewer than one "
                            f"global batch (`batch_size`={c.batch_size})")
        self.sampler = GlobalBatchSampler(len(train_set), c.batch_size, env.rank, env.world_size, c.seed,
                                          *bucketing(c, train_set, info))
        if self.sampler.local_batch % c.grad_accum:
            raise UserError(f"`batch_size`={c.batch_size} (global) is {self.sampler.local_batch} per process, which "
                            f"does not split into `grad_accum`={c.grad_accum} equal micro-batches")
        self.sample_shape, self.input_dtype = train_set.sample_shape, train_set.dtype  # what a graphed step reads
        self.feeder = feeder(c.loader, train_set, env.device, c.num_workers,
                             lambda: info.loader_dataset(train_set, kept))

        self.state = TrainState.from_checkpoint(snapshot) if snapshot else TrainState()
        self.state.tracker_run_id = self.state.tracker_run_id or tracking.new_run_id()
        self.resumed_from_step = self.state.step if snapshot else None
        self.seconds_before = self.state.train_seconds  # training time of earlier invocations of this run
        self.view = info.view(c, train_set, self.state.view)  # rows, columns, pixels; or standardised sequences
        self.state.view = self.view.state()  # what checkpoints keep of it
        self.view.to(env.device)
        self.num_classes = len(info.classes)
        self.class_weight = class_weights(c, train_set.labels, self.num_classes, env.device)
        self.parameter_count = count_parameters(c, self.view.input_size, self.num_classes)
        distributed.main_first(env, lambda: check_memory(self.parameter_count, c, env))  # before allocating it
        torch.manual_seed(c.seed)  # the same initial weights on every rank
        self.model = build_model(c, input_size=self.view.input_size, num_classes=self.num_classes).to(env.device)
        torch.manual_seed(c.seed + env.rank)  # but each rank its own dropout masks
        self.graphs_refused = graphs_refusal(c.cuda_graphs, env.device, c.precision, schedules_the_rate(c),
                                             c.grad_accum, info.variable_length)
        graphed = c.cuda_graphs == "on" and self.graphs_refused is None
        self.optimizer = build_optimizer(c, self.model, graphed)
        planned = c.epochs * self.sampler.steps_per_epoch
        self.total_steps = planned if c.max_steps is None else min(c.max_steps, planned)
        self.schedule = Schedule(c, self.optimizer, planned)
        self.scaler = grad_scaler(c.precision, env.device)
        if snapshot:
            self._restore(snapshot)
        # After loading: every rank starts from the restored weights (DDP broadcasts rank 0's). The
        # graphed step averages gradients itself, so it runs on the bare model.
        if graphed:
            self.ddp_model = distributed.broadcast_weights(self.model, env)
        else:
            self.ddp_model = distributed.wrap(self.model, env)
        self.graphed = graphed
        self.train_step = self._build_step(graphed)
        self._open_run_dir(resumed=snapshot is not None)

    def _resume_snapshot(self) -> Optional[dict[str, Any]]:
        """The checkpoint to continue from (None: fresh start), checked against this run's config.
        Rank 0 chooses (every rank must resume from the same file); every rank then loads it."""
        path = distributed.on_main(self.env, lambda: self.checkpoints.choose_resume(self.c, self.log.info))
        if path is None:
            return None
        # Rank 0 first: a rank that cannot read it says so itself.
        return distributed.main_first(self.env, lambda: self.checkpoints.load_for_resume(path, self.c))

    def _restore(self, snapshot: dict[str, Any]) -> None:
        """Weights, optimizer, schedule, scaler and this rank's RNG state, before the model is
        wrapped in DDP."""
        load_weights(self.model, snapshot)
        self.optimizer.load_state_dict(snapshot["optimizer"])
        keep_optimizer_mode(self.optimizer)
        if self.schedule.active:  # the saved rates and the schedulers' positions: the same curve continues
            self.schedule.load_state_dict(snapshot.get("schedule"))
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self.c.lr  # the command line's rate wins (it is the same when the command is)
                group["weight_decay"] = self.c.weight_decay  # and its weight decay
        if snapshot["scaler"]:  # empty when saved by a run without fp16
            self.scaler.load_state_dict(snapshot["scaler"])
        rng = snapshot["rng"]
        if self.env.rank < len(rng):
            set_rng_state(rng[self.env.rank], self.env.device)
        # else: a rank the saved run did not have keeps its fresh seed (seed + rank): only its dropout
        # masks can differ from an uninterrupted run
        self.resumed_note = (f"resumed from step {self.state.step} (epoch {self.state.epoch + 1}, batch "
                               f"{self.state.batch_in_epoch}/{self.sampler.steps_per_epoch}, saved by "
                               f"{snapshot['world_size']} process(es))")

    def _open_run_dir(self, resumed: bool) -> None:
        """Every check has passed: from here on the run directory may change."""
        if self.env.is_main:
            if self.c.overwrite:
                self.checkpoints.remove_all()
            self.log.start(keep_until_step=self.state.step if resumed else None)
        self.log.write_json("config.json", to_dict(self.c))
        # The wandb run continues across resumes: its id travels in the checkpoints (rank 0 saves them).
        self.log.open_trackers(lambda: tracking.open_trackers(self.c, self.out_dir, self.state.tracker_run_id,
                                                              self.log.info))

    def _build_step(self, graphed: bool) -> EagerStep:
        """The training step over this rank's part of each global batch. Every rank holds the same
        number of samples and the gradients are averaged over ranks (by DDP during backward, or by
        the graphed step between its graphs), so each update is the one a single process would make
        on the whole global batch."""
        c, env = self.c, self.env
        common = dict(params=list(self.model.parameters()), optimizer=self.optimizer, scaler=self.scaler,
                      view=self.view, precision=c.precision, loss=c.loss, grad_clip=c.grad_clip,
                      class_weight=self.class_weight)
        if not graphed:
            return EagerStep(self.ddp_model, device=env.device, accumulate=c.grad_accum, **common)
        return GraphedStep(self.model, env=env, local_batch=self.sampler.local_batch,
                           image_shape=self.sample_shape, input_dtype=self.input_dtype,
                           **common)

    def train(self) -> dict[str, Any]:
        """The algorithm: steps over the sampler's global batches, the loss reported every
        --log-every steps, the test set scored at each epoch's end, checkpoints by the manager's
        policy; a signal stops every rank at the same step, after a checkpoint."""
        s, steps_per_epoch = self.state, self.sampler.steps_per_epoch
        stopped, pruned, last_eval, stop = None, False, None, None
        try:
            self._announce()
            stop = StopRequest(self.env, self.c.dist_timeout)  # SIGTERM / SIGINT / SIGUSR1: checkpoint, leave at a step
            # An epoch whose last batch is done but not yet scored (stopped right there) is scored first.
            while ((s.step < self.total_steps or s.batch_in_epoch == steps_per_epoch) and stopped is None
                   and not s.early_stopped and not pruned):
                self.sampler.load_state_dict({"epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch})
                clock = Clock(self.env.device)
                # The same batches in the same order at any world size; a graphed step's are written
                # straight into the tensors its graph reads.
                for images, labels in self.feeder.batches(self.sampler, into=self.train_step.inputs()):
                    self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (logged)
                    self.train_step(images, labels)
                    self.schedule.step()  # the next step's rate
                    s.step, s.batch_in_epoch = s.step + 1, s.batch_in_epoch + 1
                    self.sampler.batch_in_epoch = s.batch_in_epoch  # its state_dict() is the run's position
                    clock.interval_steps += 1
                    self.log.advance()
                    if s.step % self.c.log_every == 0:  # the only sync with the device inside the epoch (but scoring)
                        self._report(clock)
                    elif self.log.progress_due():  # rank 0 alone, so no loss (that needs all ranks) and no sync
                        self.log.progress(f"{self._position()}, {format_seconds(self._elapsed())} elapsed, "
                                          f"ETA {format_seconds(self._eta())} (loss every {self.c.log_every} steps)")
                    inside = s.batch_in_epoch < steps_per_epoch  # the epoch's end is scored and saved below
                    if inside and self.c.eval_every and s.step % self.c.eval_every == 0:
                        with clock.paused():
                            last_eval = self._score_and_track()  # a learning-curve point
                    if inside:
                        self.save("step")
                    stopped = stop.agreed(s.step)  # the same answer on every rank: all stop at this step
                    # early_stopped follows the all-reduced validation score: the same on every rank
                    if stopped is not None or s.step >= self.total_steps or s.early_stopped:
                        break
                s.train_seconds += clock.seconds()
                if stopped is not None or s.early_stopped:
                    break  # the epoch's evaluation runs after the resume, when its last batch is done
                # The epoch's score; a --max-steps cut inside an epoch is scored too, but leaves the best
                # weights, early stopping and plateau alone: an uninterrupted run never scores there.
                complete = s.batch_in_epoch == steps_per_epoch
                if complete or last_eval is None or last_eval["step"] != s.step:
                    last_eval = self._score_epoch(track=complete)
                if complete:  # epoch complete: a resume starts the next one
                    s.epoch, s.batch_in_epoch = s.epoch + 1, 0
                self.save("epoch")
                if complete and self.pruner is not None and self.val_set is not None:
                    # rank 0's answer reaches every rank through the stop agreement; a finished run is never pruned
                    ask = self.pruner(s.epoch, last_eval) and s.step < self.total_steps
                    agreed = stop.agree_now(ask)
                    pruned, stopped = agreed == PRUNE, None if agreed == PRUNE else agreed
            stop.close()  # from here a signal acts as usual: the evaluation and saves below are short
            if stopped is not None:
                self._stop(stopped)
            if pruned:
                return self._pruned(last_eval)
            if stop.received is not None:  # it came after the last agreement: nothing was left to stop
                name = signal.Signals(stop.received).name
                self.log.info(f"{name} arrived in the run's last steps: it finished instead")
            results = self._finish(last_eval)
        finally:
            if stop is not None:
                stop.close(settle=False)  # done above, unless an error is on its way out
            self.log.close()  # the bar, and the trackers' files completed (wandb prints its own lines)
            self.lock.release()
        self._summarize(results)  # last: after whatever the trackers printed
        return results

    def score(self, split: Optional[str] = None, model: Optional[nn.Module] = None) -> dict[str, Any]:
        """Exact evaluation of the current weights (or `model`'s), tagged with the step, on `split`:
        by default the one training watches, the validation split when there is one."""
        split = split or self.watched
        data = self.val_set if split == "val" else self.test_set
        if data is None:  # no test set given, and no validation split: nothing to score
            return {"step": self.state.step}
        return {"step": self.state.step, **evaluate(model or self.ddp_model, data, self.env, self.c.eval_batch_size,
                                                    self.c.precision, self.view, split=split)}

    def _score_and_track(self, track: bool = True) -> dict[str, Any]:
        """Score, log it, and (`track`) with a validation split keep the best weights
        (checkpoints/best.pt; ties keep the earlier) and count the scores since for --early-stop."""
        s = self.state
        result = self.score()
        if self.watched is not None:
            self.log.event("eval", epoch=s.epoch + 1, **scalars(result))
        if self.val_set is None or not track:
            return result
        self.schedule.after_score(result["val_loss"])  # plateau: cut the rate when the loss stalls
        if s.best_val_accuracy is None or result["val_accuracy"] > s.best_val_accuracy:
            s.best_val_accuracy, s.best_step, s.scores_since_best = result["val_accuracy"], s.step, 0
            self.save("best")
        else:
            s.scores_since_best += 1
            if self.c.early_stop and s.scores_since_best >= self.c.early_stop:
                s.early_stopped = True
                self.log.event("early_stop", step=s.step, best_step=s.best_step, best_val_accuracy=s.best_val_accuracy)
                self.log.info(f"early stop at step {s.step}: {s.scores_since_best} validation scores without beating "
                              f"{s.best_val_accuracy:.4f} (step {s.best_step})")
        return result

    def save(self, boundary: str) -> None:
        """Checkpoint the current state if the policy says so at this boundary, or as best.pt for
        boundary "best" (collective)."""
        best = boundary == "best"
        if not best and not self.checkpoints.should_save(self.state.step, boundary):
            return
        info = self.checkpoints.save(self.env, self.state, model=self.model, optimizer=self.optimizer,
                                     scaler=self.scaler, config=to_dict(self.c), best=best,
                                     schedule=self.schedule.state_dict() if self.schedule.active else None)
        if info:
            self.log.event("checkpoint", step=self.state.step, **info)
            self.log.info(f"saved {info['path']} ({info['bytes'] / 1e6:.1f} MB in {info['seconds']:.2f} s)")

    def _announce(self) -> None:
        env, c, batches = self.env, self.c, self.sampler
        backend = f", {env.backend}" if env.is_distributed else ""
        self.log.info(f"dist_rnn {__version__}: {env.world_size} process(es) on {env.device.type}{backend} "
                      f"({torch.get_num_threads()} CPU threads each), global batch {c.batch_size} "
                      f"({batches.local_batch} per process"
                      f"{f' in {c.grad_accum} micro-batches' if c.grad_accum > 1 else ''}), "
                      f"{batches.steps_per_epoch} steps/epoch, "
                      f"{self.total_steps} steps, {batches.n} train / "
                      f"{'' if self.val_set is None else f'{len(self.val_set)} validation{self._fold()} / '}"
                      f"{'no' if self.test_set is None else len(self.test_set)} test samples "
                      f"({self.view.describe(c.dataset)}), "
                      f"{c.cell.upper()} of {self.parameter_count:,} parameters -> {self.out_dir}")
        checkpoint_bytes = self.parameter_count * 4 * (1 + optimizer_states(c))  # weights + optimizer state
        if checkpoint_bytes > 1e9:  # a model this size costs minutes a step on a CPU: say so before the first one
            self.log.info(f"warning: a large model: each checkpoint will be about {checkpoint_bytes / 1e9:.1f} GB")
        if warning := self.view.warning():
            self.log.info(f"warning: {warning}")
        if self.resumed_from_step is not None:
            self.log.info(self.resumed_note)
        # Who (re)started the run, and how: a resume, or a change of world size, is visible in the log.
        self.log.event("start" if self.resumed_from_step is None else "resume", step=self.state.step,
                       world_size=env.world_size, device=env.device.type, dist_rnn_version=__version__,
                       torch_version=torch.__version__, command=self.command,
                       launcher="torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "python")
        if self.graphs_refused:
            self.log.info(f"warning: {self.graphs_refused}")
        elif self.graphed:
            self.log.info("training step captured in CUDA graphs (experimental)")
        self.log.start_progress(self.total_steps, done=self.state.step)
        self._started = time.perf_counter()

    def _fold(self) -> str:
        """` (fold 2 of 0-4)` with --val-folds: which run of a k-fold validation this is."""
        return f" (fold {self.c.val_fold} of 0-{self.c.val_folds - 1})" if self.c.val_folds else ""

    def _elapsed(self) -> float:
        """Seconds since this attempt's loop began (evaluations and saves included: the wall clock)."""
        return time.perf_counter() - self._started

    def _position(self) -> str:
        s = self.state
        return f"Epoch [{s.epoch + 1}/{self.c.epochs}], Step [{s.batch_in_epoch}/{self.sampler.steps_per_epoch}]"

    def _eta(self) -> float:
        """Seconds left at this attempt's pace so far (evaluations and saves included)."""
        done = self.state.step - (self.resumed_from_step or 0)
        return self._elapsed() / max(done, 1) * (self.total_steps - self.state.step)

    def _report(self, clock: Clock) -> None:
        """The training loss since the last report (mean over steps and ranks) and the speed, to the
        console, metrics.jsonl and trackers."""
        s, c = self.state, self.c
        loss_value, rate = global_mean(self.train_step.take_mean_loss(), self.env), clock.rate(c.batch_size)
        self.log.progress(f"{self._position()}, Loss: {loss_value:.4f}, {rate:.0f} samples/s, "
                          f"{format_seconds(self._elapsed())} elapsed, ETA {format_seconds(self._eta())}")
        self.log.event("train", step=s.step, epoch=s.epoch + 1, loss=loss_value,
                       lr=self.step_lr, samples_per_s=rate)
        self.log.show(loss=f"{loss_value:.4f}", samples_per_s=f"{rate:.0f}")
        clock.restart_interval()

    def _score_epoch(self, track: bool = True) -> dict[str, Any]:
        result = self._score_and_track(track)
        if self.watched is None:
            return result
        split, name = ("val", "validation") if self.val_set is not None else ("test", "test")
        self.log.info(f"Epoch [{self.state.epoch + 1}/{self.c.epochs}] {name} accuracy "
                      f"{result[f'{split}_accuracy']:.4f} ({result[f'{split}_correct']}/{result[f'{split}_samples']}), "
                      f"{name} loss "
                      f"{result[f'{split}_loss']:.4f}")
        return result

    def _test_final_and_best(self) -> dict[str, Any]:
        """The test set scored for the final weights and for the best validation score's (from
        checkpoints/best.pt, which every rank reads once rank 0 has written it); logged as one event.
        Without a test set: where the best weights are."""
        s = self.state
        final = self.score("test")
        best_path, best_model = checkpoint_dir(self.out_dir) / BEST_NAME, None
        if s.best_step is not None and s.best_step != s.step:
            snapshot = distributed.main_first(self.env, lambda: load_checkpoint(best_path))
            saved_at = TrainState.from_checkpoint(snapshot).step  # the same on every rank: one file
            if saved_at == s.best_step:
                best_model = build_model(self.c, input_size=self.view.input_size, num_classes=self.num_classes)
                load_weights(best_model, snapshot)
            else:  # written by an attempt whose later steps were lost (resumed from an older checkpoint)
                self.log.info(f"warning: {best_path} holds step {saved_at}, not the best validation score's step "
                              f"{s.best_step}: its weights are not reported")
        have_best = s.best_step == s.step or best_model is not None
        best_test = None
        if self.test_set is not None and have_best:
            best_test = final["test_accuracy"] if best_model is None else \
                self.score("test", model=best_model.to(self.env.device))["test_accuracy"]
        figures = {"test_accuracy": final.get("test_accuracy"), "test_samples": final.get("test_samples"),
                   "test_loss": final.get("test_loss"), "test_confusion": final.get("test_confusion"),
                   "best_step": s.best_step,
                   "best_val_accuracy": s.best_val_accuracy, "best_test_accuracy": best_test,
                   "best_checkpoint": str(best_path) if have_best else None}
        self.log.event("test", step=s.step, **{k: v for k, v in scalars(figures).items() if k != "best_checkpoint"})
        return figures

    def _stop(self, signum: int) -> None:
        """Checkpoint the step every rank stopped at, say how to continue, and leave together."""
        self.save("stop")
        name = signal.Signals(signum).name
        self.log.event("stop", step=self.state.step, signal=name)
        how = "run the same command again" if self.out_dir_chosen else \
            f"run the same command with --out-dir {self.out_dir} (without it, a new run starts)"
        self.log.info(f"stopped by {name} at step {self.state.step} of {self.total_steps}, checkpoint saved; "
                      f"to resume, {how}")
        distributed.barrier(self.env)
        raise Stopped(signum)

    def _pruned(self, last_eval: dict[str, Any]) -> dict[str, Any]:
        """End a run its search pruned: its epoch-end checkpoint stays (an evaluate or a plot can use
        it), pruned.json says where it stopped, and no test figure is made."""
        s = self.state
        pruned = {"pruned": True, "steps": s.step, "epochs": s.epoch, "val_accuracy": last_eval["val_accuracy"],
                  "val_loss": last_eval["val_loss"], "best_step": s.best_step, "best_val_accuracy": s.best_val_accuracy}
        self.log.event("pruned", step=s.step)
        self.log.write_json("pruned.json", pruned)
        self.log.info(f"pruned by the search after epoch {s.epoch} (step {s.step} of {self.total_steps}): "
                      f"validation accuracy {last_eval['val_accuracy']:.4f}; {self.out_dir / 'pruned.json'}")
        distributed.barrier(self.env)  # leave together: rank 0 may still be writing
        return pruned

    def _finish(self, last_eval: Optional[dict[str, Any]]) -> dict[str, Any]:
        s, c = self.state, self.c
        if last_eval is None:  # nothing left to train (--max-steps 0, or resuming a finished run)
            last_eval = self.score()
            if self.watched is not None:
                self.log.event("eval", epoch=s.epoch, **scalars(last_eval))
        self.save("end")  # a no-op when the epoch's end already saved this step
        if self.val_set is not None:  # the test set, once, for the final weights and the best ones
            last_eval = {**last_eval, **self._test_final_and_best()}
        results = {
            "test_accuracy": last_eval.get("test_accuracy"), "test_samples": last_eval.get("test_samples"),
            "test_loss": last_eval.get("test_loss"), "world_size": self.env.world_size, "global_batch_size": c.batch_size,
            "epochs": c.epochs, "steps": s.step, "train_seconds": s.train_seconds,
            "train_samples_per_s": s.step * c.batch_size / s.train_seconds if s.train_seconds else None,
            "precision": c.precision, "device": self.env.device.type,
            "checkpoint": str(checkpoint_dir(self.out_dir) / f"step-{s.step}.pt"),
            "resumed_from_step": self.resumed_from_step, "dist_rnn_version": __version__,
        }
        if last_eval.get("test_confusion"):  # the final weights' errors, class by class
            results.update(test_per_class=per_class(last_eval["test_confusion"], [str(c) for c in self.view.classes]),
                           test_confusion=last_eval["test_confusion"])
        if self.val_set is not None:
            results.update({k: last_eval[k] for k in ("val_accuracy", "val_loss", "val_samples", "best_step",
                                                      "best_val_accuracy", "best_test_accuracy", "best_checkpoint")},
                           early_stopped=s.early_stopped)
        # This invocation alone (after a resume, possibly at another world size): its own steps and speed.
        steps, seconds = s.step - (self.resumed_from_step or 0), s.train_seconds - self.seconds_before
        results.update(invocation_steps=steps, invocation_train_seconds=seconds,
                       invocation_samples_per_s=steps * c.batch_size / seconds if seconds else None)
        self.log.write_json("results.json", results)
        self.log.summary(results)
        distributed.barrier(self.env)  # leave together: rank 0 may still be writing
        return results

    def _summarize(self, r: dict[str, Any]) -> None:
        """The run in a few lines, where a user looks first: at the end of the output. After a resume,
        this invocation's steps and time come apart from the whole run's (its speed mixes world sizes)."""
        rate = f"{r['invocation_samples_per_s']:.0f} samples/s" if r["invocation_samples_per_s"] else "no training"
        this = (f"{r['steps']} steps" if r["resumed_from_step"] is None else
                f"this invocation: steps {r['resumed_from_step']}-{r['steps']} ({r['invocation_steps']} steps)")
        lines = ["done: no test set" if r["test_accuracy"] is None else
                 f"done: test accuracy {r['test_accuracy']:.4f} on {r['test_samples']} samples, test loss "
                 f"{r['test_loss']:.4f}"]
        if "best_step" in r:
            stopped = ", stopped early" if r["early_stopped"] else ""
            lines[0] += " (final weights)"
            if r["best_step"] is None:
                lines.append("no best weights: nothing was trained" if r["steps"] == 0 else
                             f"no best weights: complete epochs choose them, and --max-steps {self.c.max_steps} "
                             "ended the run inside its first (the final weights' validation score is above)")
            else:
                test = (f"test accuracy {r['best_test_accuracy']:.4f} ({r['best_checkpoint']})"
                        if r["best_test_accuracy"] is not None else r["best_checkpoint"] or "not reported")
                lines.append(f"best validation accuracy{self._fold()} {r['best_val_accuracy']:.4f} at step "
                             f"{r['best_step']}{stopped}: {test}")
        lines.append(f"{this}, {r['invocation_train_seconds']:.1f} s of training ({rate}), world size "
                     f"{r['world_size']} on {r['device']}, {format_seconds(self._elapsed())} wall time")
        if r["resumed_from_step"] is not None:
            lines.append(f"whole run: {r['steps']} steps, {r['train_seconds']:.1f} s of training over every "
                         f"invocation (resumed from step {r['resumed_from_step']})")
        lines.append(f"results: {self.out_dir / 'results.json'}; checkpoint: {r['checkpoint']}")
        self.log.info("\n      ".join(lines))


def command_line() -> str:
    """This process's command, as a user would type it again (torchrun's workers: the module's part)."""
    return " ".join([prog("dist_rnn.train"), *map(shlex.quote, sys.argv[1:])])


def run(c: TrainConfig, env: DistEnv) -> dict[str, Any]:
    """Train and evaluate as configured; returns the results (also written by rank 0)."""
    pruner = None
    if c.trial:  # a run of a search's trial (dist_rnn.sweep): Optuna is needed only then
        from dist_rnn.search import TrialReporter
        pruner = TrialReporter(c.trial, env.is_main)
    return Trainer(c, env, pruner=pruner).train()


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `python -m dist_rnn.train` (and of torchrun's workers)."""
    return run_command(prog("dist_rnn.train"), lambda: parse_config(argv), run)


if __name__ == "__main__":
    sys.exit(main())
