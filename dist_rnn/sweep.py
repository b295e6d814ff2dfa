"""`python -m dist_rnn.sweep SPEC.yaml --out-dir SWEEP_DIR`: a grid (or a list) of training options x
seeds, each a `dist_rnn.train` run of its own under SWEEP_DIR, run here N at a time (--jobs) or as one
SLURM job array (--slurm); the same command again skips the finished runs and resumes the others;
`--report SWEEP_DIR` tables them, the configuration chosen on validation marked; `--refit N` then
trains the configuration chosen for a refit on the whole training split, seeds 0 .. N-1.

The spec (YAML or JSON; option names as in config files):

    base: {preset: seed-lstm, max_steps: 40, limit_train: 3000, val_size: 500}
    grid: {lr: [0.001, 0.003], hidden_size: [32, 64]}     # or  runs: [{lr: 0.001}, {cell: gru}]
    seeds: [0, 1]                                          # or  seeds: 2  (0 and 1)
    folds: 5                 # optional: K-fold validation, every seed x fold a run (--val-folds/--val-fold)

With `search` and `space` instead of a grid, the sweep is an Optuna study (dist_rnn/search.py): trials
sampled from the space, pruned on their validation scores, taken by --jobs N workers here or by the
tasks of a --slurm array.

Layout of SWEEP_DIR: sweep.json (the runs), configs/NAME.json (each run's options, what its
`--config` reads), runs/NAME/ (each run's directory), logs/NAME.log (each local run's output),
slurm/ (the array's script, task lists and logs), report.md and report.csv. A refit's runs are
runs/refit,NAME beside the others.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dist_rnn import slurm_files
from dist_rnn.cli import ArgumentParser, add_dataclass_flags, describe, prog, run_cli
from dist_rnn.config import TrainConfig, check_limits, checked_values, did_you_mean, from_values, option, read_file
from dist_rnn.distributed import threads_per_rank
from dist_rnn.errors import UserError, first_line
from dist_rnn.files import atomic_write, atomic_write_json, ensure_writable_dir
from dist_rnn.lock import RunLock

SPEC_KEYS = ("base", "grid", "runs", "search", "space", "seeds", "folds")
SET_BY_THE_SWEEP = {name: f"is set by the sweep ({why})" for name, why in (
    ("out_dir", "each run's is SWEEP_DIR/runs/NAME"), ("resume", "finished runs are skipped, the others resume"),
    ("overwrite", "delete a run's directory to start it again"), ("config", "write its options in 'base'"),
    ("seed", "list them in 'seeds'"), ("val_folds", "give 'folds: K' in the spec"),
    ("val_fold", "'folds: K' runs every fold"), ("trial", "each run of a search reports to its own trial"))}
POLL_S = 0.5


@dataclass
class SweepConfig:
    """Options of `python -m dist_rnn.sweep` (the spec is positional)."""

    out_dir: Optional[str] = option(None, "the sweep's directory: every run's directory, log and config go under it "
                                    "(needed to run; the same directory again skips finished runs)")
    data_dir: Optional[str] = option(None, "passed to every run as --data-dir (default: each run's own default)")
    jobs: int = option(1, "runs at a time on this machine, the cores shared out between them (each run gets "
                       "cores / jobs threads, or $OMP_NUM_THREADS / jobs where you set it)", min=1)
    slurm: bool = option(False, "submit the unfinished runs as one SLURM job array (a task per run, each requeued "
                         "and resumed on preemption like slurm/train.sbatch) instead of running them here")
    array: Optional[str] = option(None, "with --slurm: at most N tasks of the array at once ('%%4' or '4'); "
                                   "a search: N workers (default: one per trial)")
    sbatch_args: Optional[str] = option(None, "with --slurm: more sbatch options for the array, after an =, e.g. "
                                        "--sbatch-args='--partition=gpu --gpus-per-node=1 --cpus-per-task=8 "
                                        "--time=2:00:00' (the script asks for one node and 1 h)")
    wait: bool = option(False, "with --slurm: return when the array has ended, with the report (default: print "
                        "the array's job id and return)")
    refit: int = option(0, "once every run has finished: train the configuration whose final weights have the best "
                        "mean validation accuracy on the whole training split (no validation split), seeds 0 .. N-1, "
                        "and report its test accuracy (with --slurm, the same command again once the array has "
                        "ended submits the refit; a search: the best trial's options)", min=0)
    dry_run: bool = option(False, "print the runs (and what would be run or submitted) and write nothing")
    worker: bool = option(False, "a search (the spec has 'search'): take trials from the study in --out-dir until it "
                          "has its trials, and end; what each task of a --slurm search runs (written for you)")
    report: Optional[str] = option(None, "tabulate the sweep in this directory instead (mean +- sd over seeds, the "
                                   "configuration with the best mean validation accuracy marked); writes "
                                   "report.md and report.csv there")


@dataclass
class Run:
    """One training run of the sweep: a configuration (its grid point) at one seed."""

    name: str
    point: dict[str, Any]  # the options this configuration sets beyond 'base'
    seed: int
    options: dict[str, Any]  # everything its --config file holds

    @property
    def configuration(self) -> str:
        return label(self.point)


def label(point: dict[str, Any]) -> str:
    """A configuration as a user reads it: `lr=0.001 hidden_size=32` ('base' alone: 'base')."""
    return " ".join(f"{k}={v}" for k, v in point.items()) or "base"


def run_name(point: dict[str, Any], seed: int, fold: Optional[int] = None) -> str:
    """A run's directory name, readable and safe in a path: `lr=0.001,hidden_size=32,seed=0` (and
    `,fold=2` with K-fold validation)."""
    name = ",".join(f"{k}={v}" for k, v in [*point.items(), ("seed", seed),
                                              *([] if fold is None else [("fold", fold)])])
    name = re.sub(r"[^A-Za-z0-9=,._+-]", "_", name)
    if len(name) > 120:  # file names have limits: keep a readable start and make it unique
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


# -- the spec ---------------------------------------------------------------------------------------

def read_spec(path: str) -> dict[str, Any]:
    """The spec file as a mapping with known top-level keys (one line naming the file if not)."""
    if not Path(path).is_file():
        raise UserError(f"spec {path}: no such file")
    spec = read_file(path, f"spec {path}")
    if not isinstance(spec, dict):
        raise UserError(f"spec {path}: expected a mapping with {', '.join(SPEC_KEYS)}")
    known_keys(spec, SPEC_KEYS, f"spec {path}", "a spec")
    if "grid" in spec and "runs" in spec:
        raise UserError(f"spec {path}: give 'grid' or 'runs', not both")
    return spec


def known_keys(mapping: dict[Any, Any], keys: tuple[str, ...], where: str, what: str) -> None:
    """One line naming a key of `mapping` that is not one of `keys` (and the one meant, if close)."""
    for key in mapping:
        if key not in keys:
            raise UserError(f"{where}: unknown key {key!r}{did_you_mean(str(key), keys)} ({what} has "
                            f"{', '.join(keys)})")


def options(values: Any, where: str) -> dict[str, Any]:
    """Option values of the spec, each checked against the TrainConfig field it names."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of option names to values, got {type(values).__name__}")
    return checked_values(values, TrainConfig, where, word="option", refused=SET_BY_THE_SWEEP)


def grid_points(spec: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """The configurations: every combination of 'grid''s values (in the order written), or the list
    'runs', or 'base' alone."""
    if "runs" in spec:
        runs = spec["runs"]
        if not isinstance(runs, list):
            raise UserError(f"spec {path}: 'runs' must be a list of mappings of options")
        return [options(r, f"spec {path}: runs[{i}]") for i, r in enumerate(runs)]
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"spec {path}: 'grid' must map option names to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise UserError(f"spec {path}: grid {key!r} must be a list of values, got {values!r}")
    keys = list(grid)
    return [options(dict(zip(keys, combo)), f"spec {path}: grid") for combo in itertools.product(*grid.values())]


def folds_of(spec: dict[str, Any], path: str) -> list[Optional[int]]:
    """The folds each configuration and seed runs: 0 .. K-1 with 'folds: K', else one run (None)."""
    folds = spec.get("folds")
    if folds is None:
        return [None]
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise UserError(f"spec {path}: 'folds' must be a number of folds >= 2, got {folds!r}")
    return list(range(folds))


def seeds_of(spec: dict[str, Any], path: str) -> list[int]:
    seeds = spec.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"spec {path}: 'seeds' must be a list of integers or a count, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"spec {path}: 'seeds' lists a seed twice: {seeds}")
    return seeds


def plan(path: str, sweep_dir: Path, data_dir: Optional[str] = None, refit: int = 0) -> list[Run]:
    """Every run the spec asks for, each checked as `dist_rnn.train` would check it (one line naming
    the run if one cannot work), before anything is written or started; `data_dir` (absolute in
    each run's options, so a rerun on other data is noticed) overrides the spec's. With `refit`,
    each configuration's refit is checked too (the choice is made later)."""
    spec = read_spec(path)
    base = options(spec.get("base"), f"spec {path}: base")
    if data_dir:
        base["data_dir"] = str(Path(data_dir).absolute())
    runs, names = [], {}
    folds = folds_of(spec, path)
    points = grid_points(spec, path)
    for point in points if refit else []:
        configuration = {**base, **point}
        if not (configuration.get("val_size") or spec.get("folds")):
            raise UserError(f"spec {path}: --refit trains the configuration chosen on validation: give "
                            f"{label(point)} a val_size, or the spec 'folds: K'")
        refit_runs(configuration, point, refit, sweep_dir, f"spec {path}: ")
    for point, seed, fold in itertools.product(points, seeds_of(spec, path), folds):
        kfold = {} if fold is None else {"val_folds": len(folds), "val_fold": fold}
        values = {**base, **point, "seed": seed, **kfold}
        name = run_name(point, seed, fold)
        same = json.dumps({**point, "seed": seed, **kfold}, sort_keys=True, default=str)
        if name in names:
            raise UserError(f"spec {path}: the run {name} is listed twice" if names[name] == same else
                            f"spec {path}: two runs would share the directory {name} (their values differ only "
                            "in characters a file name cannot hold)")
        names[name] = same
        try:
            from_values({**values, "out_dir": str(sweep_dir / "runs" / name)})
        except UserError as e:
            raise UserError(f"spec {path}: run {name}: {e}") from None
        runs.append(Run(name, point, seed, values))
    if not runs:
        raise UserError(f"spec {path}: no runs (an empty grid list, 'runs' or 'seeds')")
    return runs


def refit_runs(configuration: dict[str, Any], point: dict[str, Any], seeds: int, sweep_dir: Path,
               where: str = "") -> list[Run]:
    """A configuration (its options, 'base' included) trained on the whole training split (no
    validation split), seeds 0 .. seeds-1."""
    runs = []
    for seed in range(seeds):
        name = "refit," + run_name(point, seed)
        values = {**configuration, "seed": seed, "val_size": 0.0}
        try:
            from_values({**values, "out_dir": str(sweep_dir / "runs" / name)})
        except UserError as e:
            raise UserError(f"{where}run {name} (a refit, without a validation split): {e.args[0]}") from None
        runs.append(Run(name, point, seed, values))
    return runs


# -- the state of a sweep directory -----------------------------------------------------------------

def status(sweep_dir: Path, run: Run) -> str:
    """'done' (results.json written), 'resume' (checkpoints but no results) or 'new'."""
    run_dir = sweep_dir / "runs" / run.name
    if (run_dir / "results.json").is_file():
        return "done"
    return "resume" if any((run_dir / "checkpoints").glob("*.pt")) else "new"


def config_file(sweep_dir: Path, run: Run) -> Path:
    return sweep_dir / "configs" / f"{run.name}.json"


def run_options(sweep_dir: Path, run: Run) -> dict[str, Any]:
    return {**run.options, "out_dir": str((sweep_dir / "runs" / run.name).absolute())}


def check_same_runs(sweep_dir: Path, runs: list[Run]) -> None:
    """A run already in the directory must have been made from the same options: resuming or
    skipping it otherwise would report one configuration's results under another's name."""
    for run in runs:
        path = config_file(sweep_dir, run)
        if not path.is_file():
            continue
        try:
            before = json.loads(path.read_text())
        except ValueError:
            continue  # cut short while written (atomic writes make that unlikely): written again
        now = run_options(sweep_dir, run)
        # (not out_dir: a sweep directory that was moved still holds its runs)
        changed = sorted(k for k in {*before, *now} - {"out_dir"} if before.get(k) != now.get(k))
        if changed:
            raise UserError(f"{sweep_dir}: the run {run.name} there was made with other values of "
                            f"{', '.join(changed)}: use another --out-dir, or delete {sweep_dir / 'runs' / run.name}")


def write_configs(sweep_dir: Path, runs: list[Run]) -> None:
    for run in runs:
        atomic_write_json(config_file(sweep_dir, run), run_options(sweep_dir, run))


def write_plan(sweep_dir: Path, spec_path: str, runs: list[Run], refit: Optional[list[Run]] = None) -> None:
    """sweep.json: the spec and the runs, and the refit's runs once planned."""
    def listing(runs: list[Run]) -> list[dict[str, Any]]:
        return [{"name": r.name, "configuration": r.point, "seed": r.seed} for r in runs]

    listed = {"spec": str(Path(spec_path).absolute()), "runs": listing(runs)}
    if refit:
        listed["refit"] = listing(refit)
    atomic_write_json(sweep_dir / "sweep.json", listed)


def listed_refit(sweep_dir: Path) -> list[Run]:
    try:
        return read_plan(sweep_dir, "refit")
    except UserError:  # no sweep.json yet
        return []


def read_plan(sweep_dir: Path, key: str = "runs") -> list[Run]:
    """The sweep's runs (key "runs") or its refit's ("refit": none before one is planned)."""
    path = sweep_dir / "sweep.json"
    try:
        listed = json.loads(path.read_text())
        runs = listed["runs"] if key == "runs" else listed.get(key, [])
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{sweep_dir}: not a sweep directory (no readable sweep.json: {first_line(e)})") from None
    return [Run(r["name"], r["configuration"], r["seed"], {}) for r in runs]


def train_command(sweep_dir: Path, run: Run, c: SweepConfig, threads: Optional[int]) -> list[str]:
    command = [sys.executable, "-m", "dist_rnn.train", "--config", str(config_file(sweep_dir, run).absolute())]
    if threads and "threads" not in run.options:
        command += ["--threads", str(threads)]
    return command


# -- running here -----------------------------------------------------------------------------------

def run_here(sweep_dir: Path, todo: list[Run], c: SweepConfig) -> None:
    """Train the runs, `jobs` at a time, each with its share of the cores. SIGINT, SIGTERM or SIGHUP
    stops the runs under way (each checkpoints its step: the same command resumes them) and the
    sweep; a second Ctrl-C reaches them as theirs does (stop now)."""
    # the cores, or the threads $OMP_NUM_THREADS allows this sweep (more would spin against other work)
    threads = max(1, threads_per_rank(0) // min(c.jobs, len(todo)))
    (sweep_dir / "logs").mkdir(exist_ok=True)
    pending, running, started, done = list(todo), {}, 0, 0
    stopping: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        stopping.append(signum)
        for proc, _, _ in running.values():  # the run checkpoints its step and exits
            proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while (pending and not stopping) or running:
            while pending and len(running) < c.jobs and not stopping:
                run = pending.pop(0)
                log = open(sweep_dir / "logs" / f"{run.name}.log", "ab")
                # A session of its own: a Ctrl-C reaches the runs through stop(), once.
                proc = subprocess.Popen(train_command(sweep_dir, run, c, threads), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                log.close()
                running[run.name] = (proc, run, time.monotonic())
                if stopping:  # the signal came while it started: it stops too
                    proc.send_signal(signal.SIGTERM)
                started += 1
                print(f"started {run.name} ({started} of {len(todo)})", flush=True)
            time.sleep(POLL_S)
            for name, (proc, run, began) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                done += 1
                print(f"[{done}/{len(todo)} ended] {outcome(sweep_dir, run, proc.returncode, bool(stopping))} "
                      f"({time.monotonic() - began:.0f} s)", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopping:
        raise Stopping(stopping[0])


class Stopping(Exception):
    """The sweep was asked to stop; its runs have checkpointed."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def outcome(sweep_dir: Path, run: Run, returncode: int, stopping: bool = False) -> str:
    """One line on a run that has ended: its scores, stopped (by the sweep's stop), or how it failed
    and where its log is."""
    log = sweep_dir / "logs" / f"{run.name}.log"
    results = read_results(sweep_dir, run)
    if returncode == 0 and results:
        return f"done {run.name}: {scores(results)}"
    if returncode == 0 or stopping and returncode in (-signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM,
                                                       128 + signal.SIGINT):
        return f"stopped {run.name} (checkpointed: the same command resumes it)"
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return f"FAILED {run.name} (exit {returncode}): {lines[-1] if lines else '?'} (log: {log})"


def read_results(sweep_dir: Path, run: Run) -> Optional[dict[str, Any]]:
    try:
        return json.loads((sweep_dir / "runs" / run.name / "results.json").read_text())
    except (OSError, ValueError):
        return None


def scores(r: dict[str, Any]) -> str:
    if r.get("best_val_accuracy") is None:
        return f"test accuracy {r['test_accuracy']:.4f}"
    best = "not reported" if r.get("best_test_accuracy") is None else f"{r['best_test_accuracy']:.4f}"
    return f"best validation accuracy {r['best_val_accuracy']:.4f} (step {r['best_step']}), its test accuracy {best}"


# -- SLURM ------------------------------------------------------------------------------------------

ARRAY_SCRIPT = """#!/usr/bin/env bash
# Written by python -m dist_rnn.sweep: task I of the array trains the run whose config file is on
# line I+1 of the task list ($1), through the launch logic of every dist_rnn job (slurm/job.sh, of
# the checkout or the installed package the sweep set DIST_RNN_HOME to: torchrun on the task's
# node, USR1 at the time limit or on preemption checkpoints, the task requeues itself and resumes).
#SBATCH --job-name=dist_rnn-sweep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
config=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$1")
shift
exec bash "$DIST_RNN_HOME/slurm/job.sh" --config "$config" "$@"
"""


def slurm_home() -> Path:
    """The directory whose slurm/job.sh the array's tasks run: $DIST_RNN_HOME, else the installed
    package's (its package data), else the checkout this package is in (see dist_rnn.slurm_files)."""
    try:
        return slurm_files.home()
    except UserError as e:
        raise UserError(f"--slurm: {e}") from None


def throttle(array: Optional[str]) -> str:
    if array is None:
        return ""
    if not re.fullmatch(r"%?[1-9][0-9]*", array):
        raise UserError(f"`array` must be a number of tasks at once, as '%4' or '4', got {array!r}")
    return "%" + array.lstrip("%")


def sbatch_args(c: SweepConfig) -> list[str]:
    try:
        return shlex.split(c.sbatch_args or "")
    except ValueError as e:
        raise UserError(f"`sbatch_args` {c.sbatch_args!r}: {e}") from None


def check_slurm(c: SweepConfig) -> None:
    """Everything a submission needs, checked before anything is written: sbatch, the job script
    the tasks run, the throttle, and the sbatch options (sbatch --test-only: a partition or a
    resource the cluster does not have is refused now, not after the sweep directory is made)."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError("--slurm: sbatch is not on PATH (run the sweep where SLURM jobs are submitted, or "
                        "without --slurm to run here)")
    slurm_home()
    test = subprocess.run([sbatch, "--test-only", f"--array=0-0{throttle(c.array)}", *sbatch_args(c)],
                          input=ARRAY_SCRIPT, capture_output=True, text=True)
    if test.returncode != 0:
        raise UserError(f"sbatch refuses the array: {first_line(test.stderr.strip() or test.stdout.strip())}")


def sbatch_command(sweep_dir: Path, todo: list[Run], c: SweepConfig, tasks: Path) -> list[str]:
    logs = sweep_dir.absolute() / "slurm"
    return [str(shutil.which("sbatch")), "--parsable", f"--array=0-{len(todo) - 1}{throttle(c.array)}",
            f"--output={logs}/%A_%a.out", *sbatch_args(c), str(logs / "array.sbatch"), str(tasks)]


def arrays_in_flight(sweep_dir: Path) -> list[str]:
    """Arrays this sweep directory submitted that SLURM still holds (a second submission would train
    their runs twice)."""
    path = sweep_dir / "slurm" / "arrays.txt"
    jobs = path.read_text().split() if path.is_file() else []
    return [job for job in jobs if queued(job)]


def submit(sweep_dir: Path, todo: list[Run], command: list[str], tasks: Path) -> str:
    """Write the array's script and task list, submit; returns the array's job id (also recorded in
    slurm/arrays.txt)."""
    lines = "".join(f"{config_file(sweep_dir, r).absolute()}\n" for r in todo)
    atomic_write(tasks, lambda fh: fh.write(lines.encode()))
    try:
        return submit_array(sweep_dir, "array.sbatch", ARRAY_SCRIPT, command)
    except UserError:
        tasks.unlink(missing_ok=True)
        raise


def submit_array(sweep_dir: Path, script: str, text: str, command: list[str]) -> str:
    """Write the array's script as slurm/SCRIPT and run `command` (sbatch ... SCRIPT ...); returns the
    array's job id, also recorded in slurm/arrays.txt."""
    atomic_write(sweep_dir / "slurm" / script, lambda fh: fh.write(text.encode()))
    env = {**os.environ, "DIST_RNN_HOME": str(slurm_home()), "PYTHON": os.environ.get("PYTHON", sys.executable)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"sbatch refused the array: {first_line(proc.stderr.strip() or proc.stdout.strip())}")
    job = proc.stdout.strip().split(";")[0]
    with open(sweep_dir / "slurm" / "arrays.txt", "a") as fh:
        fh.write(job + "\n")
    return job


def queued(job: str) -> list[str]:
    """The states of the array's tasks still pending or running (one per task: -r), [] once it has
    ended (squeue then lists none, or no longer knows the job)."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%T"], capture_output=True, text=True)
    if out.returncode != 0:  # "Invalid job id specified": ended and forgotten
        return []
    return [s for s in out.stdout.split() if s not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")]


def wait_for(job: str, runs: list[Run], sweep_dir: Path) -> None:
    """Until no task of the array is pending or running (requeued tasks included), a line when the
    counts change."""
    last = None
    while True:
        states = queued(job)
        if not states:
            return
        finished = sum(status(sweep_dir, r) == "done" for r in runs)
        counts = f"array {job}: {states.count('RUNNING')} running, {states.count('PENDING')} pending, " \
                 f"{finished} of {len(runs)} runs finished"
        if counts != last:
            print(counts, flush=True)
            last = counts
        time.sleep(2)


# -- the report -------------------------------------------------------------------------------------

def mean_sd(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def tabulate(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """A row per configuration (mean and sd over its finished seeds) and a line per run that has no
    results (not averaged over). With a validation split in the runs, the row with the best mean
    validation accuracy is `chosen`, and the one whose final weights have the best mean validation
    accuracy is the `refit` choice (each the first on a tie); the test set plays no part in either."""
    runs = read_plan(sweep_dir)
    rows: dict[str, dict[str, Any]] = {}
    missing = []
    for run in runs:
        row = rows.setdefault(run.configuration, {"configuration": run.point, "seeds": [], "val": [], "val_final": [],
                                                  "test_best": [], "test_final": [], "planned": 0, "seed_set": set()})
        row["planned"] += 1
        row["seed_set"].add(run.seed)
        r = read_results(sweep_dir, run)
        if r is None:
            log = sweep_dir / "logs" / f"{run.name}.log"
            where = f"; log: {log}" if log.is_file() else \
                f"; SLURM logs in {sweep_dir / 'slurm'}" if (sweep_dir / "slurm").is_dir() else ""
            missing.append(f"{run.name}: no results.json (failed, stopped or not run yet{where})")
            continue
        row["seeds"].append(run.seed)
        if r.get("test_accuracy") is not None:  # (a run without a test set has none)
            row["test_final"].append(r["test_accuracy"])
        if r.get("val_accuracy") is not None:  # the final weights' (what a refit without validation keeps)
            row["val_final"].append(r["val_accuracy"])
        if r.get("best_val_accuracy") is not None:
            row["val"].append(r["best_val_accuracy"])
            if r.get("best_test_accuracy") is not None:
                row["test_best"].append(r["best_test_accuracy"])
    table = []
    for name, row in rows.items():
        out = {"configuration": name, **{k: v for k, v in row["configuration"].items()}, "seeds": len(row["seeds"]),
               "planned_seeds": row["planned"], "folds": row["planned"] // len(row["seed_set"])}
        for key in ("val", "val_final", "test_best", "test_final"):
            out[f"{key}_mean"], out[f"{key}_sd"] = mean_sd(row[key])
        out["chosen"] = out["refit"] = False
        table.append(out)
    # Chosen among the configurations whose every seed has a validation score: one with fewer would be
    # compared on other seeds (and favoured by chance).
    for key, mark in (("val", "chosen"), ("val_final", "refit")):
        complete = [row for row in table if len(rows[row["configuration"]][key]) == row["planned_seeds"]]
        if complete:
            max(complete, key=lambda row: row[f"{key}_mean"])[mark] = True  # max keeps the first of equals
    return table, missing


def refit_choice(table: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    return next((row for row in table if row["refit"]), None)


def tabulate_refit(sweep_dir: Path) -> list[tuple[Run, Optional[dict[str, Any]]]]:
    """The refit's runs with their results (None: none yet)."""
    return [(run, read_results(sweep_dir, run)) for run in read_plan(sweep_dir, "refit")]


def percent(mean: Optional[float], sd: Optional[float]) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")


def markdown(table: list[dict[str, Any]], missing: list[str], refit: str = "", checkpoints: Optional[list[str]] = None
             ) -> str:
    validated = any(row["val_mean"] is not None for row in table)
    folds = any(row["folds"] > 1 for row in table)
    lines = [f"| configuration | {'runs (seeds x folds)' if folds else 'seeds'} | validation accuracy % | "
             "validation accuracy % (final weights) | test accuracy % (best checkpoint) | test accuracy % (final weights) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in table:
        mark = " **(chosen)**" * row["chosen"] + " (refit)" * row["refit"]
        runs = row["seeds"] if row["seeds"] == row["planned_seeds"] else f"{row['seeds']} of {row['planned_seeds']}"
        if folds:
            runs = f"{runs} ({row['planned_seeds'] // row['folds']} x {row['folds']})"
        name = row["configuration"].replace("|", "\\|")
        lines.append(f"| {name}{mark} | {runs} | {percent(row['val_mean'], row['val_sd'])} | "
                     f"{percent(row['val_final_mean'], row['val_final_sd'])} | "
                     f"{percent(row['test_best_mean'], row['test_best_sd'])} | "
                     f"{percent(row['test_final_mean'], row['test_final_sd'])} |")
    notes = ["", "Mean ± sample standard deviation over the runs that finished (each seed, and with 'folds' each "
             "fold of each seed); the chosen configuration has "
             "the best mean validation accuracy (of each run's best checkpoint) among those whose every seed "
             "finished (the test set plays no part in the choice). The final weights' validation accuracy is the "
             "one to choose by for a refit that keeps the final weights: `--refit N` trains the configuration "
             "marked (refit) on the whole training split."
             if validated else "No run has a validation split (`val_size`): nothing is chosen, since choosing on "
             "the test set would report a biased score."]
    notes += [note for note in (within_noise(table, "val", "chosen"), within_noise(table, "val_final", "refit")) if note]
    if checkpoints:
        notes += ["", "The chosen configuration's best checkpoints (`evaluate` or `predict --checkpoint`):",
                  *[f"- {c}" for c in checkpoints]]
    if missing:
        notes += ["", f"Not averaged over ({len(missing)} runs):", *[f"- {m}" for m in missing]]
    if refit:
        notes += ["", refit]
    return "\n".join(lines + notes) + "\n"


def within_noise(table: list[dict[str, Any]], key: str, mark: str) -> str:
    """A note when the marked row leads the runner-up by less than one standard deviation across runs."""
    ranked = sorted((r for r in table if r[f"{key}_mean"] is not None and r["seeds"] == r["planned_seeds"]),
                    key=lambda r: -r[f"{key}_mean"])  # the rows the choice was made among
    chosen = next((r for r in ranked if r[mark]), None)
    if chosen is None or len(ranked) < 2:
        return ""
    runner_up = next(r for r in ranked if r is not chosen)
    lead = 100 * (chosen[f"{key}_mean"] - runner_up[f"{key}_mean"])
    spread = 100 * max(chosen[f"{key}_sd"] or 0, runner_up[f"{key}_sd"] or 0)
    if lead > spread:
        return ""
    how = "ties with {}" if lead == 0 else f"leads {{}} by {lead:.2f} points"
    return (f"\nWithin the noise: ({mark}) {chosen['configuration']} {how.format(runner_up['configuration'])}, "
            f"within one standard deviation across runs ({spread:.2f} points): more seeds or folds would be "
            "needed to tell them apart.")


def best_checkpoints(sweep_dir: Path, configuration: str) -> list[str]:
    """The best checkpoint of each run of a configuration, as paths from the sweep directory."""
    paths = []
    for run in read_plan(sweep_dir):
        r = read_results(sweep_dir, run) if run.configuration == configuration else None
        if r and r.get("best_checkpoint"):
            path = Path(r["best_checkpoint"])
            inside = path.is_relative_to(sweep_dir.absolute())
            paths.append(str(path.relative_to(sweep_dir.absolute()) if inside else path))
    return paths


def refit_markdown(refit: list[tuple[Run, Optional[dict[str, Any]]]], current: bool) -> str:
    """The refit's test accuracy (its final weights: it has no validation split to choose a checkpoint
    by); `current`: of the configuration marked (refit) now, not one made before the runs changed."""
    if not current:
        return (f"**Refit**: the one in runs/refit,* is of {refit[0][0].configuration}, not of the configuration "
                "marked (refit) now: `--refit N` trains that one.")
    scores = [r["test_accuracy"] for _, r in refit if r is not None]
    per_seed = ", ".join(f"seed {run.seed} {100 * r['test_accuracy']:.2f}" if r else f"seed {run.seed} -"
                         for run, r in refit)
    done = "" if len(scores) == len(refit) else f" ({len(scores)} of {len(refit)} runs finished)"
    return (f"**Refit** of {refit[0][0].configuration} on the whole training split{done}: test accuracy % "
            f"{percent(*mean_sd(scores))} ({per_seed}); the runs: runs/refit,*")


def csv_text(table: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for row in table for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()


def report(sweep_dir: Path) -> tuple[str, list[str]]:
    """Write report.md and report.csv into the sweep directory; returns the Markdown and the runs
    without results."""
    table, missing = tabulate(sweep_dir)
    refit = tabulate_refit(sweep_dir)
    choice = refit_choice(table)
    current = bool(refit and choice and refit[0][0].configuration == choice["configuration"])
    if current:
        missing += [f"{run.name}: no results.json (failed, stopped or not run yet)" for run, r in refit if r is None]
        choice["refit_test_mean"], choice["refit_test_sd"] = mean_sd([r["test_accuracy"] for _, r in refit if r])
    chosen = next((row["configuration"] for row in table if row["chosen"]), None)
    text = markdown(table, missing, refit_markdown(refit, current) if refit else "",
                    best_checkpoints(sweep_dir, chosen) if chosen else None)
    atomic_write(sweep_dir / "report.md", lambda fh: fh.write(text.encode()))
    atomic_write(sweep_dir / "report.csv", lambda fh: fh.write(csv_text(table).encode()))
    return text, missing


# -- the command ------------------------------------------------------------------------------------

def sweep(spec: str, c: SweepConfig) -> int:
    """Plan, skip what is finished, run or submit the rest; returns the exit status (1 when a run
    failed or has no results)."""
    if c.out_dir is None:
        raise UserError("`out_dir` is needed: the sweep's directory (the same one again skips finished runs)")
    check_limits(c)
    if not c.slurm and (c.array or c.sbatch_args or c.wait):
        raise UserError("`array`, `sbatch_args` and `wait` go with `slurm`")
    if c.slurm and c.jobs != 1:
        raise UserError("`jobs` is for runs here; with `slurm`, `array` limits the tasks at once")
    sweep_dir = Path(c.out_dir)
    if {"search", "space"} & set(read_spec(spec)) or c.worker:
        from dist_rnn import search  # (it imports this module)
        return search.run(spec, c, sweep_dir)
    runs = plan(spec, sweep_dir, c.data_dir, c.refit)
    check_same_runs(sweep_dir, runs)
    if c.slurm:
        check_slurm(c)
    if c.slurm and (busy := arrays_in_flight(sweep_dir)):
        raise UserError(f"{sweep_dir}: its array {busy[0]} is still queued or running: wait for it "
                        f"(squeue -j {busy[0]}) or scancel it, then run this again")
    lock = RunLock(sweep_dir, shlex.join(sys.argv))
    if not c.dry_run:  # before reading what is finished: another sweep here may be finishing runs
        ensure_writable_dir(sweep_dir)
        lock.acquire(lambda line: print(line, flush=True))
    try:
        return run_or_submit(spec, c, sweep_dir, runs)
    finally:
        if lock.held:
            lock.release()


def run_or_submit(spec: str, c: SweepConfig, sweep_dir: Path, runs: list[Run]) -> int:
    """What sweep() does once it holds the directory (or, for a dry run, without writing anything):
    the runs, then (with --refit, once every run has results) the refit, then the report."""
    if c.dry_run:
        execute(sweep_dir, runs, c, "runs")
        if c.refit:
            print(f"then, once every run has results: the refit of the configuration chosen for it, "
                  f"seeds 0 .. {c.refit - 1}")
        return 0
    write_configs(sweep_dir, runs)
    write_plan(sweep_dir, spec, runs, listed_refit(sweep_dir))  # (a refit planned before stays listed)
    code = execute(sweep_dir, runs, c, "runs", then="the same command again submits the refit" if c.refit else None)
    if code is None and c.refit:
        code = plan_and_run_refit(spec, c, sweep_dir, runs)
    if code is not None:
        return code
    text, missing = report(sweep_dir)
    print(text, end="")
    print(f"report: {sweep_dir / 'report.md'}, {sweep_dir / 'report.csv'}")
    return 1 if missing else 0


def plan_and_run_refit(spec: str, c: SweepConfig, sweep_dir: Path, runs: list[Run]) -> Optional[int]:
    """Plan the refit of the configuration chosen for it and train it (None: go on to the report)."""
    table, missing = tabulate(sweep_dir)
    chosen = refit_choice(table)
    if missing or chosen is None:
        print(f"no refit: {len(missing)} runs have no results" if missing else
              "no refit: the runs have no validation split to choose by")
        return None
    run = next(r for r in runs if r.configuration == chosen["configuration"])
    configuration = {k: v for k, v in run.options.items() if k not in ("seed", "val_folds", "val_fold")}
    planned = refit_runs(configuration, run.point, c.refit, sweep_dir)
    check_same_runs(sweep_dir, planned)
    print(f"refit of {chosen['configuration']} (best mean validation accuracy of the final weights, "
          f"{percent(chosen['val_final_mean'], chosen['val_final_sd'])} %) on the whole training split:")
    write_configs(sweep_dir, planned)
    write_plan(sweep_dir, spec, runs, planned)
    return execute(sweep_dir, planned, c, "refit runs", then="the same command again reports the refit")


def execute(sweep_dir: Path, runs: list[Run], c: SweepConfig, what: str, then: Optional[str] = None) -> Optional[int]:
    """Run the unfinished runs here or submit them as an array (a dry run: print them); an exit status
    when the command ends here (an array not waited for, a stop), else None. `then`: what to do once
    an array not waited for has ended (default: --report)."""
    states = {r.name: status(sweep_dir, r) for r in runs}
    todo = [r for r in runs if states[r.name] != "done"]
    configurations, seeds = len({r.configuration for r in runs}), len({r.seed for r in runs})
    folds = len(runs) // max(1, configurations * seeds)
    print(f"{len(runs)} {what} ({configurations} configurations x {seeds} seeds"
          f"{f' x {folds} folds' if folds > 1 else ''}): "
          f"{len(runs) - len(todo)} finished, {sum(s == 'resume' for s in states.values())} to resume, "
          f"{sum(s == 'new' for s in states.values())} to start", flush=True)
    tasks = sweep_dir / "slurm" / f"tasks-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    submission = sbatch_command(sweep_dir, todo, c, tasks) if c.slurm and todo else None
    if c.dry_run:
        for run in runs:
            print(f"  {states[run.name]:6}  {shlex.join(['python', *train_command(sweep_dir, run, c, None)[1:]])}")
        if submission:
            print("would submit: " + shlex.join(submission))
        return None
    if not todo:
        print("nothing to run")
    elif submission:
        job = submit(sweep_dir, todo, submission, tasks)
        at_once = f", at most {throttle(c.array)[1:]} at once" if c.array else ""
        print(f"submitted job array {job}: {len(todo)} {what}{at_once}; logs in {sweep_dir / 'slurm'}")
        then = then or f"{prog('dist_rnn.sweep')} --report {sweep_dir}"
        if not c.wait:
            print(f"follow it with `squeue -j {job}`; once it has ended: {then}")
            return 0
        try:
            wait_for(job, runs, sweep_dir)
        except KeyboardInterrupt:
            print(f"no longer waiting: array {job} goes on (squeue -j {job}; once it has ended: {then})")
            return 130
    else:
        try:
            run_here(sweep_dir, todo, c)
        except Stopping as e:
            print(f"stopped by {signal.Signals(e.signum).name}: the runs under way saved checkpoints; "
                  f"the same command resumes them")
            return 128 + e.signum
    return None


def main(argv: Optional[list[str]] = None) -> int:
    parser = ArgumentParser(prog=prog("dist_rnn.sweep"), description=textwrap.fill(" ".join(describe(__doc__).split()), 100),
                            epilog="Examples:\n"
                            "  python -m dist_rnn.sweep sweep.yaml --out-dir sweeps/lr --jobs 2\n"
                            "  python -m dist_rnn.sweep sweep.yaml --out-dir sweeps/lr --slurm --array %4 --wait\n"
                            "  python -m dist_rnn.sweep search.yaml --out-dir sweeps/tpe --jobs 2 --refit 5\n"
                            "  python -m dist_rnn.sweep --report sweeps/lr",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", metavar="SPEC", help="the sweep's YAML or JSON file (base, grid or runs "
                        "or search and space, seeds, folds); not with --report")
    add_dataclass_flags(parser, SweepConfig)
    code = 0

    def command() -> None:
        nonlocal code
        args = vars(parser.parse_args(argv))
        spec = args.pop("spec")
        c = SweepConfig(**args)
        if c.report:
            if spec:
                raise UserError("--report tabulates a sweep directory: give no spec with it")
            from dist_rnn import search  # (it imports this module)
            if (Path(c.report) / search.JOURNAL).is_file():
                text, missing = search.report(Path(c.report))
            else:
                text, missing = report(Path(c.report))
            print(text, end="")
            print(f"report: {Path(c.report) / 'report.md'}, {Path(c.report) / 'report.csv'}")
            code = 1 if missing else 0  # as the sweep itself: not every run has results
            return
        if spec is None:
            raise UserError("give a SPEC file to run (or --report SWEEP_DIR; see --help)")
        code = sweep(spec, c)

    return run_cli(prog("dist_rnn.sweep"), command) or code


if __name__ == "__main__":
    sys.exit(main())
