"""The lab: runs and measurements cached as JSON records with their provenance (command or
code, seed, machine, commit and whether the tree was dirty, start time, duration), and the
report they are rendered into. The suites (one module each) go through `Lab`."""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import jinja2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn import __version__
from dist_rnn.checkpoint import TrainState, load_checkpoint, trained_config, trained_model
from dist_rnn.config import TrainConfig, option
from dist_rnn.data import SequenceView, Split, load_mnist, resolve_data_dir, trained_view
from dist_rnn.errors import UserError
from dist_rnn.files import atomic_write, atomic_write_json
from dist_rnn.plot import pyplot
from experiments.plan import Family, Plan, git, p_text

HERE = Path(__file__).parent  # where the lab asks git about its own code
PROBE_SAMPLES = 10_000  # training images used for train accuracy and for the readout probes

LSTM = ("--preset", "seed-lstm")  # 2-layer LSTM, hidden 128, batch 100, 2 epochs, Adam 0.01

LSTM_CURVE = LSTM + ("--eval-every", "50")  # the preset scored every 50 steps: the runs every suite compares with

BILSTM = ("--preset", "seed-bilstm")  # the same, bidirectional, Adam 0.003, readout out[:, -1]
BILSTM_LR = "0.003"  # its Adam rate


@dataclass
class ExperimentsConfig:
    """Options of `python -m experiments` (the suites are positional)."""

    data_dir: Optional[str] = option(None, "MNIST directory (default: $DIST_RNN_DATA, else ./data)")
    seeds: int = option(5, "seeds per headline configuration (0, 1, ...); sweep points get at most 3")
    jobs: int = option(1, "training runs at a time, each with cores/jobs threads (2 on 2 cores: about 1.4x "
                          "the runs per hour); measurements still run alone")
    cache_dir: str = option("docs/experiments/cache", "one JSON record per run or measurement")
    report: str = option("docs/experiments.md", "the report to regenerate; figures go beside it in experiments/")
    runs_dir: str = option("runs/experiments", "run directories (checkpoints) of the training runs")
    rerun: bool = option(False, "repeat the selected suites' runs even when cached")
    report_only: bool = option(False, "train nothing: regenerate the report from the cache")
    plan: str = option("experiments/plan.yaml", "the pre-registration: each section's comparisons and decisions")
    check: bool = option(False, "train nothing: check the plan and that the report regenerates from it unchanged "
                                "(exit 2 on an unplanned, degenerate or repeated test, or a decision read off the "
                                "test set)")
    prune: bool = option(False, "after regenerating the whole report, delete the cached records it does not use "
                                "(those of superseded runs; git history keeps them)")


SWEEP_SEEDS = 3  # seeds per point of a learning-rate sweep

# A selection sweep trains on the training set less a validation split of VAL_SIZE images (stratified,
# drawn by the seed) and chooses by the final weights' accuracy there, with seeds from SELECTION_SEED
# on; the test set plays no part in any choice.
VAL_SIZE = "5000"
SELECTION_SEED = 100


def run_training(command: list[str]) -> subprocess.CompletedProcess:
    """One training command, its own process, output captured (the tests start it from a warm one)."""
    return subprocess.run(command, capture_output=True, text=True)


@functools.lru_cache(maxsize=None)
def machine() -> dict[str, Any]:
    """What a record was measured on (the same for every record of one invocation: asked once, when its
    Lab is made)."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    commit = git(HERE, "rev-parse", "--short", "HEAD")
    # The code the records come from: changes to dist_rnn/ or experiments/ that no commit holds make it
    # "dirty" (the records and the report themselves do not count).
    dirty = bool(git(HERE, "status", "--porcelain", "--untracked-files=no", "--", ":/dist_rnn", ":/experiments")) \
        if commit else None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "python": platform.python_version(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None, "dist_rnn": __version__, "commit": commit, "dirty": dirty}


def provenance(record: dict[str, Any]) -> str:
    """'abc1234', 'abc1234 + changes' (a dirty tree) or 'abc1234 ?' (made before records said)."""
    m = record["machine"]
    state = {True: " + changes", False: ""}.get(m.get("dirty"), " ?")
    return f"{m.get('commit') or 'no commit'}{state}"


class Lab:
    """Runs and caches records; every suite goes through train() and measure()."""

    def __init__(self, c: ExperimentsConfig, suites: list[str]):
        self.c, self.suites = c, suites
        self.plan = Plan(Path(c.plan))
        self.cache = Path(c.cache_dir)
        self.data_dir = resolve_data_dir(c.data_dir)
        self._data: Optional[tuple[Split, Split]] = None
        self.used: list[tuple[Path, dict[str, Any]]] = []  # records the report used, in order, repeats included
        self.made: set[Path] = set()  # records made by this invocation (a --rerun repeats each once)
        self.planning = False  # run_parallel's planning passes: queue missing records in `pending`
        self.pending: dict[Path, Callable[[], dict[str, Any]]] = {}
        # What the records will say they were made with, asked at launch: a commit made while the runs go
        # on (its code is not the code running) must not be the one they name.
        machine()

    @property
    def data(self) -> tuple[Split, Split]:
        if self._data is None:
            self._data = load_mnist(self.data_dir)
        return self._data

    def _path(self, kind: str, name: str, spec: Any) -> Path:
        """Where the record of `spec` (a run's arguments and seed) is cached: one file per spec, whatever
        the suite calls it, so suites that need the same run share it."""
        key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
        existing = sorted(self.cache.glob(f"{kind}-*-{key}.json"))
        return existing[0] if existing else self.cache / f"{kind}-{name}-{key}.json"

    def _record(self, suite: str, path: Path, make: Callable[[], dict[str, Any]],
                complete: Callable[[dict[str, Any]], bool] = lambda record: True) -> Optional[dict[str, Any]]:
        """The record cached at `path` (when `complete`: it has what is asked of it now); else, when `suite`
        may run now, `make()` it and cache it (or, while planning, queue it); else None."""
        record = json.loads(path.read_text()) if path.exists() else None
        repeat = self.c.rerun and suite in self.suites and path not in self.made
        if record is None or not complete(record) or repeat:
            if self.c.report_only or suite not in self.suites:
                return None
            if self.planning:
                key = path.stem.rsplit("-", 1)[1]  # one spec asked for under two names is still one run
                if not any(p.stem.endswith(key) for p in self.pending):
                    self.pending[path] = make
                return None
            record = self._make(path, make)
        self.used.append((path, record))
        return record

    def _make(self, path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        record = make()
        atomic_write_json(path, record)
        self.made.add(path)
        return record

    def run_parallel(self, suites: Callable[[], None], max_rounds: int = 10) -> None:
        """Make every record `suites()` asks for, `jobs` training runs at a time: plan (run the suites,
        queueing what is missing), make the queue, and plan again until nothing is missing (a suite may
        ask for runs that depend on others, such as a sweep's best rate). Measurements run alone and
        first, with every core, so that no training run disturbs their timings. A failed run stops
        the queue (the runs under way finish and are kept)."""
        cores, _ = torch.get_num_threads(), self.data  # (the data loaded once, before the threads)
        for _ in range(max_rounds):
            self.planning, self.pending = True, {}
            try:
                suites()
            finally:
                self.planning = False
            queue = [(path, make) for path, make in self.pending.items() if path not in self.made]
            if not queue:
                self.used.clear()  # the planning passes' records: the report's pass lists its own
                return
            trains = [job for job in queue if job[0].name.startswith("train-")]
            for path, make in queue:
                if (path, make) not in trains:
                    self._make(path, make)
            torch.set_num_threads(self.threads_per_job())  # the analyses' share
            pool = ThreadPoolExecutor(self.c.jobs)
            try:
                for done in as_completed([pool.submit(self._make, path, make) for path, make in trains]):
                    done.result()  # re-raises a failed run's error here, at once
            finally:
                pool.shutdown(cancel_futures=True)
                torch.set_num_threads(cores)
        raise RuntimeError(f"the suites still ask for new records after {max_rounds} rounds of runs")

    def _thread_args(self) -> list[str]:
        """A training run's `--threads` (none with one job at a time: the run takes every core)."""
        return ["--threads", str(self.threads_per_job())] if self.c.jobs > 1 else []

    def threads_per_job(self) -> int:
        """CPU threads for each of the `jobs` runs at a time: the cores shared out (each taking all of
        them, the default, would oversubscribe)."""
        return max(1, len(os.sched_getaffinity(0)) // self.c.jobs)

    def records(self) -> list[dict[str, Any]]:
        """The records used so far, each once (however many suites used it), in order of first use."""
        return list(dict(self.used).values())

    def train(self, suite: str, name: str, args: tuple[str, ...], seed: int,
              analyse: Optional[Callable[..., dict[str, Any]]] = None, paired: bool = False,
              extends: Optional[tuple[str, ...]] = None) -> Optional[dict]:
        """One training run of `python -m dist_rnn.train ARGS --seed SEED`, with an optional analysis
        of its final checkpoint, `analyse(config, model, view, train_features, test_features)` (None: not
        cached, and not to be run now). `paired`: the record must say which test images it got right
        (records made before they did are made again). `extends`: the same run's arguments with fewer
        `--epochs`: where that run is cached and its directory is here, this run continues a copy of it
        instead of starting again (see _shorter_run for when that is the same run)."""
        path = self._path("train", f"{name}-s{seed}", [list(args), seed])
        if extends is not None:
            check_extends(args, extends)

        def make() -> dict[str, Any]:
            out_dir = Path(self.c.runs_dir) / path.stem
            start_from = self._shorter_run(extends, seed)
            if start_from:  # the copy, not the original: that run's own record keeps its directory
                shutil.rmtree(out_dir, ignore_errors=True)
                shutil.copytree(start_from, out_dir)
            how = ["--resume", "auto"] if start_from else ["--resume", "none", "--overwrite"]
            command = [sys.executable, "-m", "dist_rnn.train", *args, "--seed", str(seed), "--data-dir",
                       str(self.data_dir), "--out-dir", str(out_dir), *how, "--log-every", "25",
                       *self._thread_args()]
            print(f"[{suite}] {name} seed {seed}: {' '.join(command[1:])}", flush=True)
            started, start = datetime.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
            proc = run_training(command)
            if proc.returncode != 0:
                raise UserError(f"[{suite}] {name} seed {seed} failed: "
                                f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            results = json.loads((out_dir / "results.json").read_text())
            events = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
            return {"kind": "train", "suite": suite, "name": name, "seed": seed,
                    "command": ["python", *command[1:]], "machine": machine(), "concurrent_runs": self.c.jobs,
                    "started": started,
                    "seconds": round(time.perf_counter() - start, 1), "results": results,
                    "curve": [{k: e[k] for k in ("step", "loss")} for e in events if e["event"] == "train"],
                    # (a run with a validation split is scored on it as it trains, on the test set at the end)
                    "evals": [{k: e[k] for k in ("step", "test_accuracy", "test_loss", "val_accuracy", "val_loss")
                               if k in e} for e in events if e["event"] == "eval"],
                    "analysis": self._analyse(results["checkpoint"], analyse),
                    # where it continued a shorter run: that run's record (the stem of its file and of its
                    # directory), and the step it went on from
                    **({"extends": start_from.name, "resumed_from_step": results["resumed_from_step"]}
                       if start_from else {})}

        # A record made before its analysis was asked for lacks the analysis: made again, not half-used.
        wanted = getattr(getattr(analyse, "func", analyse), "provides", ()) + (("test_correct",) if paired else ())
        return self._record(suite, path, make, lambda record: all(k in record["analysis"] for k in wanted))

    def _shorter_run(self, extends: Optional[tuple[str, ...]], seed: int) -> Optional[Path]:
        """The directory of the cached run `extends` at `seed`, where continuing it makes the same run as
        starting again, else None (start again). On CPU a dist_rnn resume is bitwise the uninterrupted
        run, given the same torch, CPU, thread count and training code: the shorter run's record must say
        so (and with --rerun, it must itself be new). The loss curve matches too where the shorter run
        ends on a multiple of the 25 steps the loss is logged over."""
        if extends is None:
            return None
        record_path = self._path("train", "shorter", [list(extends), seed])
        found = Path(self.c.runs_dir) / record_path.stem
        if not record_path.exists() or not any((found / "checkpoints").glob("step-*.pt")):
            return None
        record, now = json.loads(record_path.read_text()), machine()
        was, command = record["machine"], record["command"]
        had_threads = command[command.index("--threads"):][:2] if "--threads" in command else []
        same_machine = (was["gpu"] is None and now["gpu"] is None and was["torch"] == now["torch"]
                        and was["cpu"] == now["cpu"] and had_threads == self._thread_args())
        # the training code: unchanged since the commit the shorter run came from (the tree's changes included)
        same_code = (was.get("dirty") is False and bool(git(HERE, "cat-file", "-t", was["commit"]))
                     and git(HERE, "diff", "--name-only", was["commit"], "--", ":/dist_rnn") == "")
        fresh = not self.c.rerun or record_path in self.made
        return found if same_machine and same_code and fresh else None

    def _analyse(self, checkpoint: str, analyse: Optional[Callable]) -> dict[str, Any]:
        """Scores every run needs (train and test accuracy, confusion), plus the suite's own analysis of
        the readout features (computed once: the predictions are the classifier applied to them)."""
        snapshot = load_checkpoint(Path(checkpoint))
        config = trained_config(snapshot, checkpoint)
        train, test = self.data
        view = trained_view(config, TrainState.from_checkpoint(snapshot).view)
        model = trained_model(snapshot, config, input_size=view.input_size)
        train_features = readout_features(model, view, train.images[:PROBE_SAMPLES])
        test_features = readout_features(model, view, test.images)
        with torch.no_grad():  # eval mode: the head's dropout is the identity, so this is model(x)
            train_pred, test_pred = (model.fc(f).argmax(1).numpy() for f in (train_features, test_features))
        confusion = np.zeros((10, 10), dtype=int)
        np.add.at(confusion, (test.labels.numpy(), test_pred), 1)
        wrong = np.nonzero(test_pred != test.labels.numpy())[0]
        analysis = {
            "train_accuracy": float((train_pred == train.labels[:PROBE_SAMPLES].numpy()).mean()),
            "test_accuracy": float((test_pred == test.labels.numpy()).mean()),
            "confusion": confusion.tolist(),
            "misclassified": [[int(i), int(test.labels[i]), int(test_pred[i])] for i in wrong[:40]],
            # which test images it got right, one bit each (packed, hex): what a paired test compares
            "test_correct": np.packbits(test_pred == test.labels.numpy()).tobytes().hex(),
        }
        if analyse:
            analysis.update(analyse(config, model, view, train_features, test_features))
        return analysis

    def measure(self, suite: str, name: str, seed: int, fn: Callable[..., dict[str, Any]],
                *args: Any) -> Optional[dict]:
        """One in-process measurement `fn(*args, seed)` (the record names its code), cached like a run."""

        def make() -> dict[str, Any]:
            print(f"[{suite}] {name} seed {seed}", flush=True)
            started, start = datetime.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
            torch.manual_seed(seed)
            values = fn(*args, seed)
            named = [a for a in args if isinstance(a, str)]  # the Lab argument is not worth naming
            return {"kind": "measure", "suite": suite, "name": name, "seed": seed,
                    "code": f"{fn.__module__}.{fn.__name__}({', '.join(map(repr, named))})",
                    "machine": machine(), "started": started, "seconds": round(time.perf_counter() - start, 1),
                    "values": values}

        return self._record(suite, self._path("measure", f"{name}-s{seed}", [name, seed]), make)

    def seeds(self, sweep: bool = False) -> range:
        """The seeds of a headline configuration, or of a sweep point (at most SWEEP_SEEDS)."""
        return range(min(self.c.seeds, SWEEP_SEEDS) if sweep else self.c.seeds)

    def selection_seeds(self) -> range:
        """The seeds of a selection sweep: never those of a headline configuration, so that the runs
        a choice is reported on did not make it."""
        return range(SELECTION_SEED, SELECTION_SEED + min(self.c.seeds, SWEEP_SEEDS))

    def selection_span(self) -> str:
        """The selection seeds, for prose: '100 to 102'."""
        seeds = self.selection_seeds()
        return f"{seeds[0]} to {seeds[-1]}"


def readout_features(model: nn.Module, view: SequenceView, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """What the classifier reads for each image, in batches."""
    with torch.no_grad():
        return torch.cat([model.features(view(images[i:i + batch])) for i in range(0, len(images), batch)])


def fit_linear(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
               epochs: int = 300, lr: float = 0.01) -> float:
    """Test accuracy of a softmax-regression probe trained full-batch on the given features. Its
    initial weights are nn.Linear's draws from its own seeded generator (the global one is shared
    by run_parallel's threads), so a rerun gives the same figure."""
    probe = nn.Linear(x_train.shape[1], 10)
    draws = torch.Generator().manual_seed(0)
    bound = 1 / math.sqrt(x_train.shape[1])  # nn.Linear's own bound for both, drawn in its order
    with torch.no_grad():
        probe.weight.uniform_(-bound, bound, generator=draws)
        probe.bias.uniform_(-bound, bound, generator=draws)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(probe((x_train - mean) / std), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        return float((probe((x_test - mean) / std).argmax(1) == y_test).float().mean())


def mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """'97.41 ± 0.12': the mean and the sample standard deviation over seeds (in percent by default)."""
    values = [v * scale for v in values]
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def pct(values: list[float]) -> str:
    """For prose: '97.41 % (± 0.12)'."""
    mean, std = mean_std(values).split(" ± ")
    return f"{mean} % (± {std})"


ALPHA = 0.05  # the level of the McNemar pairs' descriptive "below" counts (the families' is the plan's)


def collapsed(record: dict) -> bool:
    """A run that predicts one class for at least half of the test images: it learned (almost) nothing,
    whatever its accuracy says."""
    predicted = np.array(record["analysis"]["confusion"]).sum(0)
    return bool(predicted.max() >= predicted.sum() / 2)


def accuracy_cell(records: list[dict]) -> str:
    """A table cell: mean ± std of the test accuracy, and how many seeds collapsed to one class."""
    n = sum(collapsed(r) for r in records)
    return mean_std(accuracies(records)) + (f" ({n} of {len(records)} collapsed)" if n else "")


def accuracies(records: list[dict]) -> list[float]:
    return [r["results"]["test_accuracy"] for r in records]


class Report:
    """docs/experiments.md: each section is a Markdown template in experiments/report/ (the prose),
    rendered with the values its suite computed from the records (the numbers, tables, figures)."""

    TEMPLATES = Path(__file__).parent / "report"

    def __init__(self, path: Path, draft: bool = False):
        self.path, self.draft = path, draft  # a draft (run_parallel's planning) writes nothing
        self.figures = path.parent / "experiments"
        self.figures.mkdir(parents=True, exist_ok=True)
        self.parts: list[str] = []
        self.written: list[Path] = []
        self.drawn: dict[str, Any] = {}  # figures a suite drew, saved when its template places them
        self.answers: dict[str, dict[str, Any]] = {}  # section -> its short answer, for the closing table
        self.absent: list[str] = []  # suites whose section is missing or failed
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(self.TEMPLATES),
                                            undefined=jinja2.StrictUndefined, trim_blocks=True, autoescape=False)
        self.templates.filters["fmt"] = format  # {{ x|fmt(".1%") }}: Python's format spec

    def section(self, name: str, at_start: bool = False, **values: Any) -> None:
        """Render template `name`.md with `values` and add it to the report."""
        template = self.templates.get_template(f"{name}.md")
        placed: list[str] = []
        text = template.render(figure=lambda fig, caption: placed.append(fig) or self._figure(fig, caption), **values)
        # A section that answers a question of the study note defines {% macro answer() %}: one line for
        # the closing table (rendered apart, so that it places no figure twice).
        answer = getattr(template.make_module(dict(values, figure=lambda *_: "")), "answer", None)
        if answer:
            self.answers[name] = {"question": text.splitlines()[0].lstrip("# "), "answer": str(answer()).strip(),
                                  "figures": placed, "records": []}
        self.parts.insert(0 if at_start else len(self.parts), text.strip("\n") + "\n")
        if self.drawn:
            unplaced = ", ".join(self.drawn)
            self._discard_drawn()
            raise ValueError(f"{name}.md does not place the figures {unplaced}")

    def missing(self, suite: str, why: str = "missing", **values: Any) -> None:
        """A suite's heading (its template's first line), then why its section is absent (template `why`)."""
        self.absent.append(suite)
        source = (self.TEMPLATES / f"{suite}.md").read_text()
        heading = source.splitlines()[0]
        self.parts.append(heading + "\n")
        if "{% macro answer()" in source:  # a question: its row of the closing table says why it has no answer
            self.answers[suite] = {"question": heading.lstrip("# "), "answer": f"*{why}: see its section*",
                                   "figures": [], "records": []}
        self._discard_drawn()  # a suite that failed may have drawn some
        self.section(why, suite=suite, **values)

    def _discard_drawn(self) -> None:
        for fig in self.drawn.values():
            pyplot().close(fig)
        self.drawn.clear()

    def closing(self) -> None:
        """The closing table: each question, its short answer, its figures and its records."""
        rows = [[a["question"], a["answer"], ", ".join(f"[{f}](experiments/{f}.png)" for f in a["figures"]) or "-",
                 ", ".join(f"`{r}`" for r in a["records"]) or "-"] for a in self.answers.values()]
        self.section("closing", answers_table=self.table(["question", "answer", "figures", "records"], rows))

    @staticmethod
    def table(header: list[str], rows: list[list[Any]]) -> str:
        """A Markdown table, for a template to place."""
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])

    def draw(self, name: str, fig: Any) -> None:
        """Keep a figure for the template that places it as {{ figure(name, caption) }}."""
        self.drawn[name] = fig

    def _figure(self, name: str, caption: str) -> str:
        path = self.figures / f"{name}.png"
        fig = self.drawn.pop(name)
        if self.draft:
            pyplot().close(fig)
            return ""
        fig.tight_layout()
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
        pyplot().close(fig)
        self.written.append(path)
        return f"![{caption}](experiments/{name}.png)\n\n*{caption}*"

    def write(self) -> None:
        if not self.draft:
            atomic_write(self.path, lambda fh: fh.write("\n".join(self.parts).encode()))


def check_extends(args: tuple[str, ...], extends: tuple[str, ...]) -> None:
    """A run may extend (Lab.train) only a run with the same arguments but fewer `--epochs`, and none whose
    schedule or stopping depends on the epochs: anything else would continue another run."""
    differ = [i for i, (a, b) in enumerate(zip(args, extends)) if a != b]
    if (len(args) != len(extends) or len(differ) != 1 or args[differ[0] - 1] != "--epochs"
            or int(extends[differ[0]]) >= int(args[differ[0]])
            or any(flag in args for flag in ("--lr-schedule", "--early-stop", "--max-steps"))):
        raise ValueError(f"a run extends one with the same arguments but fewer epochs: {args} vs {extends}")


def runs(lab: Lab, suite: str, name: str, args: tuple[str, ...], analyse: Optional[Callable] = None,
         sweep: bool = False, paired: bool = False, extends: Optional[tuple[str, ...]] = None) -> list[dict]:
    """The run `args` at every seed (trained now where missing and allowed), or [] while any is missing:
    a figure is never the mean of fewer seeds than the report says. (`extends`: as Lab.train.)"""
    records = [lab.train(suite, name, args, seed, analyse, paired, extends) for seed in lab.seeds(sweep)]
    return records if all(records) else []


@dataclass
class Selection:
    """A learning-rate sweep on the validation split: rate -> its runs (one per selection seed), and
    the rate chosen (None while any run is missing); `extended`: the rate added beyond the grid's edge;
    `reads`: the validation figure the choice reads (the plan's)."""

    sweep: dict[str, list[dict]]
    chosen: Optional[str]
    extended: Optional[str] = None
    reads: str = "val_accuracy"

    def val(self, lr: str) -> list[float]:
        """The figure the choice reads (the final weights' validation accuracy) of one rate's runs."""
        return [r["results"][self.reads] for r in self.sweep[lr]]

    def cell(self, lr: str) -> str:
        """A table cell: mean ± std of the validation accuracy, '(chosen)' on the chosen rate ('-' where
        this sweep did not try `lr`)."""
        if lr not in self.sweep:
            return "-"
        return mean_std(self.val(lr)) + (" (chosen)" if lr == self.chosen else "")


def select(lab: Lab, suite: str, name: str, args_at: Callable[[str], tuple[str, ...]],
           rates: tuple[str, ...]) -> Selection:
    """Sweep `rates` (`args_at(lr)`: a run's arguments at that rate) on the validation split, at the
    selection seeds, and choose a rate by the plan's rule (choose_rate) from its runs' final weights."""
    def sweep_at(lr: str) -> list[Optional[dict]]:
        return [lab.train(suite, f"{name}-lr{lr}-val", args_at(lr) + ("--val-size", VAL_SIZE), seed)
                for seed in lab.selection_seeds()]

    reads = lab.plan.decision(suite, "rates")["reads"]
    sweep, chosen, extended = choose_rate(rates, sweep_at, lambda r: r["results"][reads])
    return Selection(sweep, chosen, extended, reads)


def choose_rate(rates: tuple[str, ...], sweep_at: Callable[[str], list[Optional[dict]]],
                score: Callable[[dict], float]) -> tuple[dict[str, list[dict]], Optional[str], Optional[str]]:
    """The plan's selection rule: sweep `rates` (`sweep_at(lr)`: that rate's records, None where missing),
    choose the rate of the best mean `score` (the first listed on a tie), and where that rate sits at the
    grid's edge and beats its neighbour, extend the grid once, one step beyond it (edge_step), and choose
    again among them all. Returns the sweep (sorted by rate where extended), the rate chosen and the rate
    added; ({}, None, None) while any record is missing."""
    sweep = {lr: sweep_at(lr) for lr in rates}
    if not all(all(records) for records in sweep.values()):
        return {}, None, None
    beyond = edge_step(rates, {lr: statistics.mean(map(score, records)) for lr, records in sweep.items()})
    if beyond is not None:
        more = sweep_at(beyond)
        if not all(more):
            return {}, None, None
        sweep = dict(sorted({**sweep, beyond: more}.items(), key=lambda kv: float(kv[0])))
    return sweep, best_rate({lr: [score(r) for r in records] for lr, records in sweep.items()}), beyond


def edge_step(rates: tuple[str, ...], means: dict[str, float]) -> Optional[str]:
    """The rate one step beyond a sweep's edge (the top rate doubled, the bottom one halved) where the
    best mean sits at that edge and beats its neighbour strictly (a tie, such as every run collapsed
    alike, is no evidence the optimum lies beyond); else None."""
    grid = sorted(rates, key=float)
    if len(grid) < 2:
        return None
    top, bottom = means[grid[-1]], means[grid[0]]
    if top == max(means.values()) and top > means[grid[-2]]:
        return f"{float(grid[-1]) * 2:g}"
    if bottom == max(means.values()) and bottom > means[grid[1]]:
        return f"{float(grid[0]) / 2:g}"
    return None


@dataclass(frozen=True)
class Paired:
    """An exact McNemar test of two runs on the same test images, per seed pair: the images only the
    first got right (`only_a`), only the second (`only_b`), and the two-sided binomial p of that split."""

    only_a: int
    only_b: int
    p: float


def mcnemar(a: list[dict], b: list[dict]) -> list[Paired]:
    """Run a[i] against run b[i], each pair on the same 10,000 test images: the test set's own sampling
    noise, which a comparison over seeds ignores. Exact: the discordant images' split against
    Binomial(n, 1/2), two-sided (twice the smaller tail, at most 1)."""
    found = []
    for ra, rb in zip(a, b):
        right_a, right_b = (np.unpackbits(np.frombuffer(bytes.fromhex(r["analysis"]["test_correct"]), np.uint8))
                            .astype(bool) for r in (ra, rb))
        only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
        n, k = only_a + only_b, min(only_a, only_b)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
        found.append(Paired(only_a, only_b, min(1.0, 2 * tail)))
    return found


def paired_text(family: Family, name: str, a: list[dict], b: list[dict]) -> str:
    """mcnemar_text() of a[i] against b[i], beside the family's comparison `name`, where the plan asks for it."""
    family.paired(name)
    return mcnemar_text(mcnemar(a, b))


def mcnemar_text(pairs: list[Paired]) -> str:
    """For prose and tables: 'per seed pair, images only the first / only the second got right:
    52/40 (p = 0.25), ...; 1 of 5 pairs below 0.05'."""
    each = ", ".join(f"{p.only_a}/{p.only_b} ({p_text(p.p)})" for p in pairs)
    return f"{each}; {sum(p.p < ALPHA for p in pairs)} of {len(pairs)} pairs below {ALPHA}"


def measures(lab: Lab, suite: str, name: str, fn: Callable[..., dict[str, Any]], *args: Any,
             sweep: bool = False) -> list[dict[str, Any]]:
    """The values of measurement `fn` at every seed, or [] while any is missing (as runs())."""
    found = [lab.measure(suite, name, seed, fn, *args) for seed in lab.seeds(sweep)]
    return [m["values"] for m in found] if all(found) else []


def best_rate(sweep: dict[str, list[float]]) -> str:
    """The learning rate of a sweep (rate -> accuracies over its seeds) with the highest mean accuracy."""
    return max(sweep, key=lambda lr: statistics.mean(sweep[lr]))


def lstm_reference(lab: Lab, suite: str, lr: str) -> list[dict]:
    """The `seed-lstm` preset at Adam rate `lr` (its own 0.01: lstm_runs()), scored every 50 steps, with
    per-image results: one set of records for every suite that needs the LSTM at a chosen rate."""
    if lr == "0.01":
        return lstm_runs(lab, suite)
    return runs(lab, suite, rate_name("lstm-curve", lr), LSTM_CURVE + at_rate(lr), paired=True)


def lstm_runs(lab: Lab, suite: str) -> list[dict]:
    """The `seed-lstm` preset's runs, scored every 50 steps and after every number of rows read: the
    reference every suite compares with (one set of records, shared)."""
    return runs(lab, suite, "lstm-curve", LSTM_CURVE, functools.partial(rows_read, lab), paired=True)


LSTM_RATES = ("0.001", "0.003", "0.01")  # Adam rates an LSTM arm's selection sweep tries


def sweep_table(report: Report, arm: str, chosen: dict[str, Selection]) -> str:
    """Selection sweeps side by side: a row per arm (label -> its sweep), its validation accuracy at every
    rate any of them tried ('-' where an arm's grid was not extended to it), and extensions_text()."""
    rates = sorted({lr for s in chosen.values() for lr in s.sweep}, key=float)
    table = report.table([arm] + [f"Adam {lr}" for lr in rates],
                         [[label] + [s.cell(lr) for lr in rates] for label, s in chosen.items()])
    return table + extensions_text(chosen)


def extensions_text(chosen: dict[str, Selection]) -> str:
    """For prose under a sweep: which grids the plan's rule extended, and which choice still sits at the
    edge of its extended grid (the rule extends once: the optimum may lie further out)."""
    extended = {label: s for label, s in chosen.items() if s.extended}
    if not extended:
        return ""
    at_edge = [f"{label} ({s.chosen})" for label, s in extended.items() if s.chosen == s.extended]
    return ("\n\nExtended one step beyond the grid's edge, as the plan's rule says (the edge's rate was the best and "
            f"beat its neighbour): {', '.join(f'{label} to {s.extended}' for label, s in extended.items())}. " +
            (f"Still at the edge after that step, which the rule takes once: {', '.join(at_edge)}; the best rate may "
             "lie further out." if at_edge else "Every choice now lies inside its grid."))


def lstm_at(lr: str, cell: str = "lstm", hidden: int = 128) -> tuple[str, ...]:
    """The preset's arguments for another cell, size or Adam rate (one spelling, so that suites share records)."""
    return LSTM + ("--cell", cell, "--hidden-size", str(hidden)) + at_rate(lr)


def preset_at(lr: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The `seed-lstm` preset with `extra` arguments at Adam rate `lr`."""
    return LSTM + extra + at_rate(lr)


def at_rate(lr: str, own: str = "0.01") -> tuple[str, ...]:
    """`--lr LR`, left out at the preset's own rate (`seed-lstm`: 0.01, `seed-bilstm`: 0.003): the records
    made before the selection sweeps spell it so, and a record's cache key is its arguments."""
    return () if lr == own else ("--lr", lr)


def rate_name(name: str, lr: str, own: str = "0.01") -> str:
    """A record name with its Adam rate (none at the preset's own rate, as at_rate())."""
    return name if lr == own else f"{name}-lr{lr}"


def accuracy_curve(record: dict, split: str = "test") -> tuple[list[int], list[float]]:
    """The steps a run was scored at, and its accuracy there on `split` (for plotting): "test", or "val"
    for a run with a validation split, which is scored on it while it trains."""
    return [e["step"] for e in record["evals"]], [e[f"{split}_accuracy"] for e in record["evals"]]


def steps_to(record: dict, accuracy: float) -> Optional[int]:
    """The first scored step at which the test accuracy reached `accuracy` (None: never)."""
    return next((e["step"] for e in record["evals"] if e["test_accuracy"] >= accuracy), None)


def steps_text(records: list[dict], accuracy: float = 0.9) -> str:
    """'150 / 200': steps to `accuracy` for each seed ('never' where the run did not get there)."""
    return " / ".join(str(steps_to(r, accuracy) or "never") for r in records)


def at_step(record: dict, step: int, split: str = "test") -> float:
    """Accuracy on `split` (as accuracy_curve) at the first score at or after `step`."""
    return next(e[f"{split}_accuracy"] for e in record["evals"] if e["step"] >= step)


def parameters(cell: str, hidden: int, layers: int = 2, inputs: int = 28, bidirectional: bool = False) -> int:
    from dist_rnn.model import RNNClassifier

    return sum(p.numel() for p in RNNClassifier(inputs, hidden, layers, 10, cell, bidirectional).parameters())


def lstm_like_hidden(cell: str, target_params: int) -> int:
    """The hidden size that gives a 2-layer `cell` classifier the parameter count closest to `target_params`
    (the count grows with the hidden size: bisect for the first size that reaches it)."""
    low, high = 1, 1024
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if parameters(cell, mid) < target_params else (low, mid)
    return min((low - 1, low), key=lambda h: abs(parameters(cell, h) - target_params))


def rows_read(lab: Lab, config: TrainConfig, model: nn.Module, view: SequenceView, x_train: torch.Tensor,
              x_test: torch.Tensor) -> dict[str, Any]:
    """Test accuracy after the first k steps (rows), k = 1..T, of a unidirectional model: its own head
    applied to the top layer's output at step k (what the trained model would answer), and a linear
    probe fitted on that output (what the state after k rows knows; every third k, 3 s each on a core)."""
    train, test = lab.data

    def outputs(images: torch.Tensor) -> torch.Tensor:  # (N, T, H): the top layer's output at every step
        with torch.no_grad():
            return torch.cat([model.rnn(view(images[i:i + 1000]))[0] for i in range(0, len(images), 1000)])

    out_train, out_test = outputs(train.images[:PROBE_SAMPLES]), outputs(test.images)
    y_train = train.labels[:PROBE_SAMPLES]
    with torch.no_grad():
        head = [float((model.fc(out_test[:, k]).argmax(1) == test.labels).float().mean())
                for k in range(out_test.shape[1])]
    probed = list(range(0, out_test.shape[1], 3))
    probe = [fit_linear(out_train[:, k], y_train, out_test[:, k], test.labels) for k in probed]
    return {"rows_read_head": head, "rows_read_probe": {"rows": [k + 1 for k in probed], "accuracy": probe}}


rows_read.provides = ("rows_read_head", "rows_read_probe")  # type: ignore[attr-defined]
