"""A search: `python -m dist_rnn.sweep SPEC --out-dir DIR` where the spec has `search` and `space`
instead of a grid. Optuna samples each trial's options (TPE or random) and prunes trials whose
validation scores fall behind (median or Hyperband); every run of a trial (each seed, and with
`folds: K` each fold) is an ordinary `dist_rnn.train` run in DIR/runs/trial-NNNN,seed=S[,fold=F].

    base: {dataset: JapaneseVowels, epochs: 30, batch_size: 30, val_size: 54}
    search: {trials: 32, sampler: tpe, pruner: median, metric: val_final_accuracy, seed: 0}
    space:
      lr: {low: 0.0001, high: 0.03, log: true}     # a range (whole numbers for an int option)
      hidden_size: [32, 64, 128]                   # a list: a choice

The study is Optuna's journal file DIR/study.journal: `--jobs N` workers here and the tasks of
`--slurm --array K` take trials from it until it has `trials` ended (complete, pruned, failed) ones.
A trial's runs run one after another; each reports its epochs' validation scores to the trial
(step: the run's place in the trial x epochs + epoch), global rank 0 asks the pruner, and every rank
stops at the same epoch (dist_rnn/stop.py). A worker holds a claim (DIR/claims/trial-NNNN/run.lock)
on each trial it trains: a trial left unfinished (a stopped or killed worker) is resumed by the
next worker that finds its claim free, from its runs' checkpoints, and recorded once.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from dist_rnn import sweep
from dist_rnn.config import TrainConfig, checked_values, did_you_mean, field_type, from_values, is_arrow_source
from dist_rnn.distributed import threads_per_rank
from dist_rnn.errors import UserError, first_line
from dist_rnn.files import atomic_write, atomic_write_json, ensure_writable_dir
from dist_rnn.lock import RunLock, held

SEARCH_KEYS = ("trials", "sampler", "pruner", "metric", "seed", "warmup")
SAMPLERS, PRUNERS = ("tpe", "random"), ("median", "hyperband", "none")
# metric -> (the results.json figure a run's value is, its direction, the score each epoch reports)
METRICS = {"val_accuracy": ("best_val_accuracy", "maximize", "val_accuracy"),
           "val_final_accuracy": ("val_accuracy", "maximize", "val_accuracy"),
           "val_loss": ("val_loss", "minimize", "val_loss")}
RANGE_KEYS = ("low", "high", "log", "step")
STUDY = "dist_rnn"
JOURNAL, MUTEX = "study.journal", "study.lock"


def optuna() -> Any:
    """Optuna, or one line saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise UserError("a search needs Optuna: pip install 'dist-rnn[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# -- the spec ---------------------------------------------------------------------------------------

@dataclass
class Search:
    """A checked search spec: the study's settings, its space (option -> Optuna distribution), and
    what every run shares (base, seeds, folds)."""

    trials: int
    sampler: str
    pruner: str
    metric: str
    seed: int
    warmup: int
    space: dict[str, Any]
    base: dict[str, Any]
    seeds: list[int]
    folds: list[Optional[int]]
    spec_path: str

    @property
    def direction(self) -> str:
        return METRICS[self.metric][1]

    def fingerprint(self) -> dict[str, Any]:
        """What a study's trials depend on: the same command again must not mix another spec's trials in."""
        return {"metric": self.metric, "base": self.base, "seeds": self.seeds, "folds": self.folds,
                "space": {k: optuna().distributions.distribution_to_json(d) for k, d in self.space.items()}}


def read_search(path: str, data_dir: Optional[str] = None, refit: int = 0) -> Search:
    """The spec's search, checked whole before anything is written or run: the settings, each
    option of the space, and every corner of the space as `dist_rnn.train` would check it."""
    spec = sweep.read_spec(path)
    where = f"spec {path}"
    if "search" not in spec or "space" not in spec:
        raise UserError(f"{where}: a search needs both 'search' (trials, sampler, ...) and 'space' (the options to "
                        "search)")
    if "grid" in spec or "runs" in spec:
        raise UserError(f"{where}: give 'grid', 'runs' or 'search', not two of them")
    settings = spec["search"]
    if not isinstance(settings, dict):
        raise UserError(f"{where}: 'search' must be a mapping ({', '.join(SEARCH_KEYS)})")
    sweep.known_keys(settings, SEARCH_KEYS, f"{where}: search", "it")
    trials = whole(settings.get("trials"), f"{where}: search: 'trials'", 1, needed=True)
    seed = whole(settings.get("seed", 0), f"{where}: search: 'seed'", 0)
    warmup = whole(settings.get("warmup", 0), f"{where}: search: 'warmup'", 0)
    chosen = {}
    for key, allowed, default in (("sampler", SAMPLERS, "tpe"), ("pruner", PRUNERS, "median"),
                                  ("metric", tuple(METRICS), "val_accuracy")):
        value = settings.get(key, default)
        if value not in allowed:
            raise UserError(f"{where}: search: '{key}' must be one of {', '.join(allowed)}, got {value!r}")
        chosen[key] = value
    base = sweep.options(spec.get("base"), f"{where}: base")
    if data_dir:
        base["data_dir"] = str(Path(data_dir).absolute())
    folds = sweep.folds_of(spec, path)
    if not (base.get("val_size") or folds != [None] or is_arrow_source(str(base.get("dataset", "")))):
        raise UserError(f"{where}: a search chooses on validation scores: give 'base' a val_size, or the spec "
                        "'folds: K'")
    space = read_space(spec["space"], base, where)
    search = Search(trials=trials, seed=seed, warmup=warmup, space=space, base=base, seeds=sweep.seeds_of(spec, path),
                    folds=folds, spec_path=str(Path(path).absolute()), **chosen)
    check_corners(search, where, refit)
    return search


def whole(value: Any, what: str, least: int, needed: bool = False) -> int:
    if value is None and needed:
        raise UserError(f"{what} is needed: the number of trials the study runs")
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{what} must be a whole number >= {least}, got {value!r}")
    return value


def read_space(space: Any, base: dict[str, Any], where: str) -> dict[str, Any]:
    """Each option of the space as an Optuna distribution: a list is a choice among its values, a
    mapping {low, high, log, step} a range (of whole numbers for an int option)."""
    distributions = optuna().distributions
    if not isinstance(space, dict) or not space:
        raise UserError(f"{where}: 'space' must map option names to a list of choices or a range {{low, high}}")
    fields = TrainConfig.__dataclass_fields__
    out = {}
    for name, values in space.items():
        here = f"{where}: space: {name}"
        if name not in fields:
            raise UserError(f"{where}: space: unknown option {name!r}{did_you_mean(str(name), fields)}")
        if name in sweep.SET_BY_THE_SWEEP:
            raise UserError(f"{where}: space: {name!r} {sweep.SET_BY_THE_SWEEP[name]}")
        if name in base:
            raise UserError(f"{here}: also set in 'base': give it in one of them")
        if isinstance(values, list):
            if not values:
                raise UserError(f"{here}: an empty list of choices")
            for v in values:
                if not (v is None or isinstance(v, (bool, int, float, str))):
                    raise UserError(f"{here}: a choice must be a plain value (a number, text, true/false or null), "
                                    f"got {v!r}")
                checked_values({name: v}, TrainConfig, here, word="option")
            if len({json.dumps(v) for v in values}) != len(values):
                raise UserError(f"{here}: a choice listed twice: {values}")
            out[name] = distributions.CategoricalDistribution(values)
        elif isinstance(values, dict):
            out[name] = read_range(name, values, here)
        else:
            raise UserError(f"{here}: expected a list of choices or a range {{low: ..., high: ...}}, got {values!r}")
    return out


def read_range(name: str, r: dict[str, Any], here: str) -> Any:
    distributions = optuna().distributions
    sweep.known_keys(r, RANGE_KEYS, here, "a range")
    low, high, log, step = r.get("low"), r.get("high"), r.get("log", False), r.get("step")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise UserError(f"{here}: a range needs numbers 'low' and 'high', got low={low!r} high={high!r}")
    if not isinstance(log, bool):
        raise UserError(f"{here}: 'log' must be true or false, got {log!r}")
    if not low < high:
        raise UserError(f"{here}: an empty range: low {low} must be below high {high}")
    if log and low <= 0:
        raise UserError(f"{here}: a log range must start above 0, got low {low}")
    if step is not None and (log or isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise UserError(f"{here}: 'step' must be a number above 0, and not with 'log'; got step={step!r} log={log}")
    kind = field_type(TrainConfig, TrainConfig.__dataclass_fields__[name])[0]
    if kind is int:
        if not all(isinstance(v, int) for v in (low, high, step or 1)):
            raise UserError(f"{here}: {name} takes whole numbers: give whole 'low', 'high' (and 'step')")
        return distributions.IntDistribution(low, high, log=log, step=step or 1)
    if kind is not float:
        raise UserError(f"{here}: {name} is not a number: give a list of choices")
    return distributions.FloatDistribution(float(low), float(high), log=log, step=step)


def check_corners(search: Search, where: str, refit: int = 0) -> None:
    """Every combination of the choices and the ranges' ends (the first 4096), checked as a run's
    options (and with `refit`, as a refit's): a value the trainer would refuse is one line now, not a
    failed trial later."""
    dists = search.space
    corners = [d.choices if hasattr(d, "choices") else sorted({d.low, d.high}) for d in dists.values()]
    for combo in itertools.islice(itertools.product(*corners), 4096):
        point = dict(zip(dists, combo))
        for seed, fold in itertools.product(search.seeds[:1], search.folds[:1]):
            values = run_values(search, point, seed, fold)
            try:
                from_values({**values, "out_dir": "unused"})
                if refit:
                    sweep.refit_runs({**search.base, **point}, point, refit, Path("unused"))
            except UserError as e:
                raise UserError(f"{where}: space: the trial {sweep.label(point)} would be refused: {e.args[0]}") from None


def run_values(search: Search, point: dict[str, Any], seed: int, fold: Optional[int]) -> dict[str, Any]:
    kfold = {} if fold is None else {"val_folds": len(search.folds), "val_fold": fold}
    return {**search.base, **point, "seed": seed, **kfold}


# -- the study --------------------------------------------------------------------------------------

def storage(sweep_dir: Path) -> Any:
    journal = optuna().storages.journal
    return optuna().storages.JournalStorage(journal.JournalFileBackend(str(sweep_dir.absolute() / JOURNAL)))


def open_study(sweep_dir: Path, search: Search, create: bool = False) -> Any:
    """The study of the sweep directory (made with `create`); refused when an earlier spec made it."""
    o = optuna()
    fingerprint = search.fingerprint()
    if create:
        study = o.create_study(study_name=STUDY, storage=storage(sweep_dir), direction=search.direction,
                               load_if_exists=True)
        if "spec" not in study.user_attrs:
            study.set_user_attr("spec", fingerprint)
    else:
        study = o.load_study(study_name=STUDY, storage=storage(sweep_dir))
    if study.user_attrs.get("spec") != fingerprint:
        raise UserError(f"{sweep_dir}: its study was made by another spec (base, seeds, folds, metric or space "
                        "differ): use another --out-dir")
    study.pruner = make_pruner(search.pruner, search.warmup)
    return study


def make_sampler(search: Search, seed: int) -> Any:
    samplers = optuna().samplers
    if search.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    return samplers.TPESampler(seed=seed, constant_liar=True)  # (the liar: workers in parallel sample apart)


def make_pruner(kind: str, warmup: int) -> Any:
    pruners = optuna().pruners
    if kind == "median":
        return pruners.MedianPruner(n_warmup_steps=warmup)
    if kind == "hyperband":
        return pruners.HyperbandPruner(min_resource=max(1, warmup))
    return pruners.NopPruner()


def ended_trials(trials: list[Any]) -> int:
    """The trials that count towards `trials`: complete, pruned, or failed (a failure is not retried:
    a space whose every trial fails would never end)."""
    states = optuna().trial.TrialState
    return sum(t.state in (states.COMPLETE, states.PRUNED, states.FAIL) for t in trials)


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def trial_runs(search: Search, number: int, point: dict[str, Any], sweep_dir: Path) -> list[sweep.Run]:
    """A trial's runs in the order it trains them (seeds, then folds); each config names its link file."""
    runs = []
    for seed, fold in itertools.product(search.seeds, search.folds):
        name = f"{trial_name(number)},seed={seed}" + ("" if fold is None else f",fold={fold}")
        link = sweep_dir.absolute() / "trials" / f"{name}.json"
        runs.append(sweep.Run(name, point, seed, {**run_values(search, point, seed, fold), "trial": str(link)}))
    return runs


def write_trial(sweep_dir: Path, search: Search, number: int, runs: list[sweep.Run]) -> None:
    """The runs' config files, and each run's link to its trial (what TrialReporter reads)."""
    sweep.write_configs(sweep_dir, runs)
    for i, run in enumerate(runs):
        epochs = from_values({**run.options, "out_dir": "unused"}).epochs
        atomic_write_json(Path(run.options["trial"]), {
            "journal": str(sweep_dir.absolute() / JOURNAL), "study": STUDY, "trial": number,
            "first_step": i * epochs, "score": METRICS[search.metric][2], "pruner": search.pruner,
            "warmup": search.warmup})


class TrialReporter:
    """What a run of a trial calls after each complete epoch (dist_rnn.train's `pruner`): global rank 0
    reports the validation score to the trial and asks the study's pruner; other ranks answer False."""

    def __init__(self, link: str, is_main: bool):
        try:
            self.link = json.loads(Path(link).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"`trial` {link}: cannot read it ({first_line(e)})") from None
        self.trial = None
        if is_main:
            o = optuna()
            study = o.load_study(study_name=self.link["study"], storage=storage(Path(self.link["journal"]).parent),
                                 pruner=make_pruner(self.link["pruner"], self.link["warmup"]))
            self.trial = o.Trial(study, trial_id(study, self.link["trial"]))

    def __call__(self, epoch: int, scores: dict[str, Any]) -> bool:
        if self.trial is None:
            return False
        with warnings.catch_warnings():  # a resumed run reports its last epochs again: Optuna keeps the first
            warnings.simplefilter("ignore")
            self.trial.report(float(scores[self.link["score"]]), self.link["first_step"] + epoch)
        return self.trial.should_prune()


def trial_id(study: Any, number: int) -> int:
    """The storage's id of trial `number` (trials are told by number: this process may not have asked them)."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def set_attr(study: Any, number: int, key: str, value: Any) -> None:
    study._storage.set_trial_user_attr(trial_id(study, number), key, value)


@contextmanager
def mutex(sweep_dir: Path) -> Iterator[None]:
    """One worker at a time chooses its next trial (between claiming and asking, no other may)."""
    fd = os.open(sweep_dir / MUTEX, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class Claimed:
    """A trial this worker trains: its runs, the claim it holds, and the run under way."""

    number: int
    runs: list[sweep.Run]
    claim: RunLock
    copy_of: Optional[int] = None  # it repeats that trial's options: it waits for its outcome
    proc: Optional[subprocess.Popen] = None
    run: Optional[sweep.Run] = None
    began: float = 0.0


def claim_next(study: Any, search: Search, sweep_dir: Path) -> Optional[Claimed]:
    """A trial to train: an unfinished one nobody holds (resumed), else a new one while the study
    has fewer than `trials` finished and running; None when there is none. A new trial whose options
    repeat a finished one's is recorded with that trial's outcome at once (its runs would repeat it)."""
    states = optuna().trial.TrialState
    with mutex(sweep_dir):
        while True:
            trials = study.get_trials(deepcopy=False)
            for t in trials:
                if t.state == states.RUNNING and (claimed := try_claim(study, search, t.number, t.params, sweep_dir,
                                                                       t.user_attrs.get("copy_of"))):
                    return claimed
            if ended_trials(trials) + sum(t.state == states.RUNNING for t in trials) >= search.trials:
                return None
            study.sampler = make_sampler(search, search.seed + len(trials))  # a trial's sample: seed and history
            trial = study.ask(search.space)
            same = next((t for t in trials if t.params == trial.params and "copy_of" not in t.user_attrs
                         and t.state != states.FAIL), None)
            if same is not None and same.state != states.RUNNING:
                copy(study, trial.number, same)
                continue
            if same is not None:  # its runs are under way: this trial waits for their outcome
                trial.set_user_attr("copy_of", same.number)
                claimed = try_claim(study, search, trial.number, trial.params, sweep_dir, same.number)
                assert claimed is not None
                return claimed
            trial.set_user_attr("runs", [r.name for r in trial_runs(search, trial.number, trial.params, sweep_dir)])
            claimed = try_claim(study, search, trial.number, trial.params, sweep_dir)
            assert claimed is not None  # asked under the mutex: no one else knows it yet
            return claimed


def copy(study: Any, number: int, same: Any) -> None:
    """Record trial `number` as `same` came out, without training (pruned: with its scores; failed:
    failed)."""
    states = optuna().trial.TrialState
    print(f"{trial_name(number)} repeats {trial_name(same.number)}'s options: recorded as it came out, untrained",
          flush=True)
    set_attr(study, number, "copy_of", same.number)
    set_attr(study, number, "steps", 0)
    if same.state == states.COMPLETE:
        study.tell(number, same.value)
    elif same.state == states.PRUNED:
        for step, value in same.intermediate_values.items():
            study._storage.set_trial_intermediate_value(trial_id(study, number), step, value)
        study.tell(number, state=states.PRUNED)
    else:
        set_attr(study, number, "error", f"as {trial_name(same.number)}")
        study.tell(number, state=states.FAIL)


def try_claim(study: Any, search: Search, number: int, point: dict[str, Any], sweep_dir: Path,
              copy_of: Optional[int] = None) -> Optional[Claimed]:
    """The claim on trial `number`, or None: another worker holds it, recorded it meanwhile (its
    claim let go since the trials were read), or a run of it is still ending."""
    claim = RunLock(sweep_dir / "claims" / trial_name(number), shlex.join(sys.argv))
    try:
        claim.acquire(lambda line: None)
    except UserError:  # another worker trains it
        return None
    if study._storage.get_trial(trial_id(study, number)).state != optuna().trial.TrialState.RUNNING:
        claim.release()
        return None
    if copy_of is not None:
        return Claimed(number, [], claim, copy_of=copy_of)
    runs = trial_runs(search, number, point, sweep_dir)
    if any(held(sweep_dir / "runs" / r.name) for r in runs):  # its last worker's run is still ending
        claim.release()
        return None
    write_trial(sweep_dir, search, number, runs)  # (again: a worker may have died before; the directory may have moved)
    return Claimed(number, runs, claim)


# -- a worker ---------------------------------------------------------------------------------------

def work(sweep_dir: Path, search: Search, jobs: int, slurm_task: bool = False) -> int:
    """Train trials, `jobs` at a time, until the study has its trials; 0 when this worker found no
    more to do, 128 + signal when stopped (its trials stay unfinished: the same command resumes
    them), 1 when a run failed (its trial recorded failed; no new trial is taken after a failure)."""
    study = open_study(sweep_dir, search)
    states = optuna().trial.TrialState
    threads = max(1, threads_per_rank(0) // jobs)
    (sweep_dir / "logs").mkdir(exist_ok=True)
    active: list[Claimed] = []
    stopping: list[int] = []
    failed = False

    def stop(signum: int, frame: Any) -> None:
        stopping.append(signum)
        for a in active:  # each run checkpoints its step and exits
            if a.proc is not None and a.proc.poll() is None:
                a.proc.send_signal(signum if slurm_task else signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}
    try:
        while True:
            # (a trial waiting for another's outcome takes no slot: the slots may resume that other)
            while sum(a.copy_of is None for a in active) < jobs and not stopping and not failed:
                claimed = claim_next(study, search, sweep_dir)
                if claimed is None:
                    break
                if claimed.copy_of is None and record(study, search, sweep_dir, claimed) is not None:
                    claimed.claim.release()  # its runs had all ended (their worker died before telling)
                    continue
                active.append(claimed)
                if claimed.copy_of is None:
                    resumed = any((sweep_dir / "runs" / r.name).is_dir() for r in claimed.runs)
                    print(f"{'resumed' if resumed else 'started'} {trial_name(claimed.number)}: "
                          f"{sweep.label(claimed.runs[0].point)}", flush=True)
            for a in active:
                if a.proc is None and a.copy_of is None and not stopping:
                    start_next_run(sweep_dir, a, threads, slurm_task)
                    if stopping:  # it came while the run started
                        stop(stopping[0], None)
            if failed and all(a.copy_of is not None for a in active):
                for a in active:  # (their originals may wait for a worker that takes new trials)
                    a.claim.release()
                active.clear()
            if not active:
                break
            time.sleep(sweep.POLL_S)
            for a in list(active):
                if a.copy_of is not None and not stopping:
                    same = study.get_trials(deepcopy=False)[a.copy_of]
                    if same.state != states.RUNNING:
                        copy(study, a.number, same)
                        a.claim.release()
                        active.remove(a)
                    continue
                if a.proc is None or a.proc.poll() is None:
                    if a.proc is None and stopping:
                        a.claim.release()
                        active.remove(a)
                    continue
                outcome = run_ended(study, search, sweep_dir, a, bool(stopping))
                if outcome == "next":
                    a.proc = None
                    continue
                a.claim.release()
                active.remove(a)
                if outcome in ("failed", "interrupted"):
                    failed = True
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for a in active:
            a.claim.release()
    if stopping:
        print(f"stopped by {signal.Signals(stopping[0]).name}: the trials under way saved checkpoints; the same "
              "command resumes them")
        return 0 if stopping[0] == signal.SIGUSR1 else 128 + stopping[0]
    print(f"{ended_trials(study.get_trials(deepcopy=False))} of {search.trials} trials ended", flush=True)
    return 1 if failed else 0


def start_next_run(sweep_dir: Path, a: Claimed, threads: int, slurm_task: bool) -> None:
    """Start the trial's first run that has not ended (finished or pruned)."""
    a.run = next(r for r in a.runs if ended(sweep_dir, r) is None)
    if slurm_task:  # through the launch logic of every dist_rnn job (torchrun on the node, resume)
        command = ["bash", str(sweep.slurm_home() / "slurm" / "job.sh"), "--config",
                   str(sweep.config_file(sweep_dir, a.run).absolute())]
    else:
        command = sweep.train_command(sweep_dir, a.run, None, threads)
    with open(sweep_dir / "logs" / f"{a.run.name}.log", "ab") as log:
        a.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=not slurm_task)
    a.began = time.monotonic()


def ended(sweep_dir: Path, run: sweep.Run) -> Optional[dict[str, Any]]:
    """A run's results.json, or its pruned.json, or None while it has neither."""
    for name in ("results.json", "pruned.json"):
        try:
            return json.loads((sweep_dir / "runs" / run.name / name).read_text())
        except (OSError, ValueError):
            pass
    return None


def run_ended(study: Any, search: Search, sweep_dir: Path, a: Claimed, stopping: bool) -> str:
    """Record what the run's end means for its trial: 'next' (start the trial's next run), 'done'
    (the trial told: complete or pruned), 'stopped' or 'interrupted' (left unfinished, to resume),
    'failed' (the trial told failed)."""
    states = optuna().trial.TrialState
    run, code = a.run, a.proc.returncode
    r = ended(sweep_dir, run)
    seconds = f"{time.monotonic() - a.began:.0f} s"
    if r is not None and code == 0:
        if record(study, search, sweep_dir, a) is None:
            print(f"  {run.name}: {sweep.scores(r)} ({seconds})", flush=True)
            return "next"
        return "done"
    if stopping or code == 0:  # stopped by this worker, or by its SLURM task's preemption (requeued)
        print(f"stopped {run.name} (checkpointed: the same command resumes {trial_name(a.number)})", flush=True)
        return "stopped"
    if code < 0:  # killed by a signal nobody here sent (the OOM killer, kill -9): resumable
        print(f"{run.name} was killed ({signal.Signals(-code).name}): the same command resumes "
              f"{trial_name(a.number)} from its checkpoints", flush=True)
        return "interrupted"
    print(sweep.outcome(sweep_dir, run, code), flush=True)
    log = sweep_dir / "logs" / f"{run.name}.log"
    set_attr(study, a.number, "error", f"{run.name} exit {code}; log: {log}")
    study.tell(a.number, state=states.FAIL)
    return "failed"


def record(study: Any, search: Search, sweep_dir: Path, a: Claimed) -> Optional[str]:
    """Tell the study how the trial ended, from its runs' files: 'pruned' (a run was), 'complete' (every
    run has results), or None (a run has not ended: nothing told)."""
    runs = [ended(sweep_dir, x) for x in a.runs]
    pruned = next((r for r in runs if r is not None and r.get("pruned")), None)
    if pruned is None and any(r is None for r in runs):
        return None
    steps = sum(r["steps"] for r in runs if r is not None)
    set_attr(study, a.number, "steps", steps)
    if pruned is not None:
        study.tell(a.number, state=optuna().trial.TrialState.PRUNED)
        name = a.runs[runs.index(pruned)].name
        print(f"pruned {trial_name(a.number)} in {name} after epoch {pruned['epochs']} ({steps} steps)", flush=True)
        return "pruned"
    metric = search.metric
    value = trial_value(runs, metric)
    if math.isnan(value):  # (a run without best weights, or a diverged loss: Optuna takes no NaN)
        set_attr(study, a.number, "error", f"its {metric} is not a number: see its runs' results.json")
        study.tell(a.number, state=optuna().trial.TrialState.FAIL)
        print(f"failed {trial_name(a.number)}: its {metric} is not a number ({steps} steps)", flush=True)
        return "failed"
    study.tell(a.number, value)
    print(f"done {trial_name(a.number)}: {metric} {value:.4f} ({steps} steps)", flush=True)
    return "complete"


def trial_value(runs: list[dict[str, Any]], metric: str) -> float:
    """A trial's value: the mean over its runs (each seed, each fold) of the metric's figure."""
    values = [r[METRICS[metric][0]] for r in runs]
    if any(v is None for v in values):  # (a run without best weights: --max-steps inside the first epoch)
        return math.nan
    return sum(values) / len(values)


# -- the command ------------------------------------------------------------------------------------

WORKER_SCRIPT = """#!/usr/bin/env bash
# Written by python -m dist_rnn.sweep: each task of the array is a worker of the search (it takes
# trials from the study until it has its trials); each run goes through slurm/job.sh (torchrun on
# the node, USR1 before the time limit or on preemption: the run checkpoints, the task requeues
# itself, and a worker resumes the trial).
#SBATCH --job-name=dist_rnn-search
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
exec "$PYTHON" -m dist_rnn.sweep "$@" --worker
"""


def run(spec: str, c: sweep.SweepConfig, sweep_dir: Path) -> int:
    """The search: check the spec, make (or continue) the study, train its trials here or as SLURM
    workers, then the refit of its best trial (--refit) and the report."""
    if c.worker and (c.slurm or c.refit or c.dry_run):
        raise UserError("`worker` trains trials of a search and ends: not with `slurm`, `refit` or `dry_run`")
    search = read_search(spec, c.data_dir, c.refit)
    workers = int(sweep.throttle(c.array)[1:]) if c.array else search.trials
    if c.slurm:
        sweep.check_slurm(c)
        if busy_arrays := sweep.arrays_in_flight(sweep_dir):
            raise UserError(f"{sweep_dir}: its array {busy_arrays[0]} is still queued or running: wait for it "
                            f"(squeue -j {busy_arrays[0]}) or scancel it, then run this again")
    if c.dry_run:
        where = f"as a SLURM array of {workers} workers" if c.slurm else f"here, {c.jobs} at a time"
        print(f"a {search.sampler} search of {search.trials} trials ({search.pruner} pruner, {search.metric}), each "
              f"{len(search.seeds) * len(search.folds)} runs, {where}, in {sweep_dir}; space:")
        for name, d in search.space.items():
            print(f"  {name}: {describe(d)}")
        return 0
    ensure_writable_dir(sweep_dir)
    if c.worker:
        return work(sweep_dir, search, 1, slurm_task=True)
    study = open_study(sweep_dir, search, create=True)
    sweep.write_plan(sweep_dir, search.spec_path, [], sweep.listed_refit(sweep_dir))  # (a refit planned before stays)
    if finished_study(study, search):
        code = None
    elif c.slurm:
        code = submit_workers(spec, c, sweep_dir, search, workers)  # None once waited for
    else:
        code = work(sweep_dir, search, c.jobs) or None
    if code is not None:  # (stopped, failed, or an array not waited for)
        return code
    if c.refit and (code := refit(spec, c, sweep_dir, search, study)) is not None:
        return code
    text, missing = report(sweep_dir)
    print(text, end="")
    print(f"report: {sweep_dir / 'report.md'}, {sweep_dir / 'report.csv'}")
    return 1 if missing else 0


def describe(d: Any) -> str:
    if hasattr(d, "choices"):
        return "one of " + ", ".join(json.dumps(v) for v in d.choices)
    return f"{d.low:g} .. {d.high:g}" + (" (log)" if d.log else "") + (f" step {d.step:g}" if d.step else "")


def submit_workers(spec: str, c: sweep.SweepConfig, sweep_dir: Path, search: Search, workers: int) -> Optional[int]:
    """Submit `workers` tasks, each a worker of the study; with --wait, return once they have ended."""
    logs = sweep_dir.absolute() / "slurm"
    arguments = [str(Path(spec).absolute()), "--out-dir", str(sweep_dir.absolute()),
                 *(["--data-dir", str(Path(c.data_dir).absolute())] if c.data_dir else [])]
    command = [str(shutil.which("sbatch")), "--parsable", f"--array=0-{workers - 1}", f"--output={logs}/%A_%a.out",
               *sweep.sbatch_args(c), str(logs / "search.sbatch"), *arguments]
    job = sweep.submit_array(sweep_dir, "search.sbatch", WORKER_SCRIPT, command)
    print(f"submitted job array {job}: {workers} workers of a study of {search.trials} trials; logs in {logs}")
    if not c.wait:
        print(f"follow it with `squeue -j {job}`; once it has ended: {sweep.prog('dist_rnn.sweep')} --report {sweep_dir}")
        return 0
    last = None
    try:
        while tasks := sweep.queued(job):
            trials = open_study(sweep_dir, search).get_trials(deepcopy=False)
            counts = (f"array {job}: {tasks.count('RUNNING')} running, {tasks.count('PENDING')} pending; "
                      f"{ended_trials(trials)} of {search.trials} trials ended")
            if counts != last:
                print(counts, flush=True)
                last = counts
            time.sleep(2)
    except KeyboardInterrupt:
        print(f"no longer waiting: array {job} goes on (squeue -j {job}; once it has ended: the same command)")
        return 130
    return None


def finished_study(study: Any, search: Search) -> bool:
    states = optuna().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    return (ended_trials(trials) >= search.trials
            and not any(t.state == states.RUNNING for t in trials))


def refit(spec: str, c: sweep.SweepConfig, sweep_dir: Path, search: Search, study: Any) -> Optional[int]:
    """Train the best trial's options on the whole training split, seeds 0 .. refit-1, each scored
    on the test set once (None: go on to the report)."""
    if not finished_study(study, search):
        print("no refit: the study has unfinished trials (the same command again finishes them)")
        return None
    try:
        best = study.best_trial
    except ValueError:
        print("no refit: no trial completed")
        return None
    planned = sweep.refit_runs({**search.base, **best.params}, best.params, c.refit, sweep_dir)
    sweep.check_same_runs(sweep_dir, planned)
    print(f"refit of {trial_name(best.number)} ({sweep.label(best.params)}; {search.metric} {best.value:.4f}) on "
          "the whole training split:")
    sweep.write_configs(sweep_dir, planned)
    sweep.write_plan(sweep_dir, search.spec_path, [], planned)
    return sweep.execute(sweep_dir, planned, c, "refit runs", then="the same command again reports the refit")


# -- the report -------------------------------------------------------------------------------------

def report(sweep_dir: Path) -> tuple[str, list[str]]:
    """report.md (the trials, the best and how it was chosen, parameter importances, Optuna's
    figures as PNG), report.csv (the trials); returns the Markdown and what is unfinished."""
    o = optuna()
    if not (sweep_dir / JOURNAL).is_file():
        raise UserError(f"{sweep_dir}: not a search directory (no {JOURNAL})")
    study = o.load_study(study_name=STUDY, storage=storage(sweep_dir))
    spec = study.user_attrs["spec"]
    metric, states = spec["metric"], o.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params}, key=list(spec["space"]).index)
    rows = []
    for t in trials:
        state = t.state.name.lower() + (f" (as trial {t.user_attrs['copy_of']})" if "copy_of" in t.user_attrs else "")
        rows.append({"trial": t.number, **{k: t.params.get(k) for k in names}, metric: t.value, "state": state,
                     "steps": t.user_attrs.get("steps"), "epochs_reported": len(t.intermediate_values)})
    best_word = "lowest" if study.direction.name == "MINIMIZE" else "highest"
    lines = [f"# Search: {len(trials)} trials, {metric} ({best_word} is best)", "",
             "| trial | " + " | ".join(names) + f" | {metric} | state | steps trained |",
             "| ---: | " + " | ".join("---" for _ in names) + " | ---: | --- | ---: |"]
    for row in rows:
        value = "-" if row[metric] is None else f"{row[metric]:.4f}"
        lines.append(f"| {row['trial']} | " + " | ".join(shown(row[k]) for k in names) +
                     f" | {value} | {row['state']} | {row['steps'] if row['steps'] is not None else '-'} |")
    counts = {s: sum(t.state == s for t in trials) for s in states}
    steps = sum(r["steps"] or 0 for r in rows)
    lines += ["", f"{counts[states.COMPLETE]} complete, {counts[states.PRUNED]} pruned, {counts[states.FAIL]} failed, "
              f"{counts[states.RUNNING]} unfinished; {steps} optimizer steps trained in all (the pruned trials' "
              "steps included)."]
    missing = [f"{trial_name(t.number)}: unfinished (the same command resumes it)" for t in trials
               if t.state == states.RUNNING]
    missing += [f"{trial_name(t.number)}: failed ({t.user_attrs.get('error', '?')})" for t in trials
                if t.state == states.FAIL]
    complete = [t for t in trials if t.state == states.COMPLETE]
    if complete:
        best = study.best_trial
        lines += ["", f"**Best**: {trial_name(best.number)} ({sweep.label(best.params)}), {metric} {best.value:.4f}: "
                  f"the complete trial with the {best_word} mean "
                  f"{metric} over its runs ({runs_word(spec)}); a pruned trial is never chosen, and the test set plays "
                  "no part. Its runs: " + ", ".join(f"runs/{n}" for n in best.user_attrs.get("runs", []))]
    with warnings.catch_warnings():  # (Optuna's about flat data: a space of one point, equal values)
        warnings.simplefilter("ignore", UserWarning)
        lines += importances(study, complete)
        lines += figures(study, sweep_dir, complete)
    refit_runs = sweep.tabulate_refit(sweep_dir) if sweep.listed_refit(sweep_dir) else []
    if refit_runs:
        current = bool(complete) and refit_runs[0][0].point == study.best_trial.params
        lines += ["", sweep.refit_markdown(refit_runs, current)]
        if current:
            missing += [f"{run.name}: no results.json" for run, r in refit_runs if r is None]
    if missing:
        lines += ["", f"Not finished ({len(missing)}):", *[f"- {m}" for m in missing]]
    text = "\n".join(lines) + "\n"
    atomic_write(sweep_dir / "report.md", lambda fh: fh.write(text.encode()))
    atomic_write(sweep_dir / "report.csv", lambda fh: fh.write(sweep.csv_text(rows).encode()))
    return text, missing


def shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def runs_word(spec: dict[str, Any]) -> str:
    seeds, folds = len(spec["seeds"]), len(spec["folds"])
    return f"{seeds} seed{'s' * (seeds > 1)}" + (f" x {folds} folds" if folds > 1 else "")


def importances(study: Any, complete: list[Any]) -> list[str]:
    """Optuna's parameter importances (PED-ANOVA, which needs no scikit-learn) over the complete trials."""
    try:
        if len(complete) < 2:
            raise ValueError(f"{len(complete)} complete trial{'s' * (len(complete) != 1)}")
        found = optuna().importance.get_param_importances(study, evaluator=evaluator())
    except (RuntimeError, ValueError, ImportError) as e:
        return ["", f"Parameter importances: not computed ({first_line(e)})."]
    if not found:
        return ["", f"Parameter importances: not computed ({len(complete)} complete trials)."]
    return ["", "| parameter | importance |", "| --- | ---: |", *[f"| {k} | {v:.3f} |" for k, v in found.items()],
            "", "Importances: Optuna's `get_param_importances` (PED-ANOVA) over the complete trials."]


def evaluator() -> Any:
    return optuna().importance.PedAnovaImportanceEvaluator()


def figures(study: Any, sweep_dir: Path, complete: list[Any]) -> list[str]:
    """Optuna's matplotlib figures as PNG beside report.md (each written whole, then renamed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plots = optuna().visualization.matplotlib
    out = []
    for name, title, plot in (("history", "optimisation history", plots.plot_optimization_history),
                              ("parallel", "parallel coordinates", plots.plot_parallel_coordinate),
                              ("importances", "parameter importances",
                               lambda study: plots.plot_param_importances(study, evaluator=evaluator()))):
        if len(complete) < 2:
            break
        try:
            ax = plot(study)
        except (RuntimeError, ValueError, ImportError) as e:
            out.append(f"({title}: not drawn: {first_line(e)})")
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        atomic_write(sweep_dir / f"{name}.png", lambda fh: fig.savefig(fh, format="png", dpi=100))
        plt.close(fig)
        out.append(f"![{title}]({name}.png)")
    return ["", *out] if out else []
