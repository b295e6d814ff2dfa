"""`python -m dist_rnn.experiments [SUITE ...]`: the experiments that answer the study note's questions.

Each suite trains real runs (`python -m dist_rnn.train`, several seeds) or takes a measurement, and
caches every record (command, seed, machine, start time, duration, results, curves) as one JSON
file under docs/experiments/cache/. docs/experiments.md and its figures are then regenerated from
the cache alone, so every number in the report comes from a recorded run: nothing is typed by
hand. A cached record is reused; --rerun repeats it, --report-only trains nothing.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn import __version__
from dist_rnn.checkpoint import TrainState, load_checkpoint
from dist_rnn.config import ArgumentParser, describe, TrainConfig, add_dataclass_flags, option
from dist_rnn.data import SequenceView, Split, load_mnist, resolve_data_dir
from dist_rnn.errors import UserError, first_line, run_cli
from dist_rnn.evaluate import trained_config, trained_model
from dist_rnn.files import atomic_write, atomic_write_json
from dist_rnn.plot import pyplot

SUITES = ("easy", "anatomy", "batch_first", "dropout", "bidirectional", "cells", "views", "loss")
PROBE_SAMPLES = 10_000  # training images used for train accuracy and for the readout probes
LSTM = ("--preset", "seed-lstm")  # 2-layer LSTM, hidden 128, batch 100, 2 epochs, Adam 0.01
BILSTM = ("--preset", "seed-bilstm")  # the same, bidirectional, Adam 0.003, readout out[:, -1]
# The pixel views are 784 steps long (28x the rows): on 2 CPU cores the presets would take hours,
# so the views suite compares all four views at one small budget.
VIEW_BUDGET = ("--hidden-size", "64", "--num-layers", "1", "--batch-size", "100", "--lr", "0.005", "--grad-clip", "1",
               "--epochs", "1", "--limit-train", "20000", "--eval-every", "50")


@dataclass
class ExperimentsConfig:
    """Options of `python -m dist_rnn.experiments` (the suites are positional)."""

    data_dir: Optional[str] = option(None, "MNIST directory (default: $DIST_RNN_DATA, else ./data)")
    seeds: int = option(2, "seeds per configuration (0, 1, ...): tables give the mean and the spread")
    cache_dir: str = option("docs/experiments/cache", "one JSON record per run or measurement")
    report: str = option("docs/experiments.md", "the report to regenerate; figures go beside it in experiments/")
    runs_dir: str = option("runs/experiments", "run directories (checkpoints) of the training runs")
    rerun: bool = option(False, "repeat the selected suites' runs even when cached")
    report_only: bool = option(False, "train nothing: regenerate the report from the cache")


@functools.lru_cache(maxsize=None)
def machine() -> dict[str, Any]:
    """What a record was measured on (the same for every record of one invocation: asked once)."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "python": platform.python_version(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None, "dist_rnn": __version__, "commit": commit}


class Lab:
    """Runs and caches records; every suite goes through train() and measure()."""

    def __init__(self, c: ExperimentsConfig, suites: list[str]):
        self.c, self.suites = c, suites
        self.cache = Path(c.cache_dir)
        self.data_dir = resolve_data_dir(c.data_dir)
        self._data: Optional[tuple[Split, Split]] = None
        self.used: list[dict[str, Any]] = []  # records the report used, in order (its appendix)

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

    def _record(self, suite: str, path: Path, make: Callable[[], dict[str, Any]]) -> Optional[dict[str, Any]]:
        """The record cached at `path`; else, when `suite` may run now, `make()` it and cache it; else None."""
        if path.exists() and not (self.c.rerun and suite in self.suites):
            record = json.loads(path.read_text())
        elif self.c.report_only or suite not in self.suites:
            return None
        else:
            record = make()
            atomic_write_json(path, record)
        self.used.append(record)
        return record

    def train(self, suite: str, name: str, args: tuple[str, ...], seed: int,
              analyse: Optional[Callable[[TrainConfig, torch.Tensor, torch.Tensor], dict[str, Any]]] = None
              ) -> Optional[dict]:
        """One training run of `python -m dist_rnn.train ARGS --seed SEED`, with an optional analysis
        of its final checkpoint (None: not cached, and not to be run now)."""
        path = self._path("train", f"{name}-s{seed}", [list(args), seed])

        def make() -> dict[str, Any]:
            out_dir = Path(self.c.runs_dir) / path.stem
            command = [sys.executable, "-m", "dist_rnn.train", *args, "--seed", str(seed), "--data-dir",
                       str(self.data_dir), "--out-dir", str(out_dir), "--resume", "none", "--overwrite",
                       "--log-every", "25"]
            print(f"[{suite}] {name} seed {seed}: {' '.join(command[1:])}", flush=True)
            started, start = datetime.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserError(f"[{suite}] {name} seed {seed} failed: "
                                f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            results = json.loads((out_dir / "results.json").read_text())
            events = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
            return {"kind": "train", "suite": suite, "name": name, "seed": seed,
                    "command": ["python", *command[1:]], "machine": machine(), "started": started,
                    "seconds": round(time.perf_counter() - start, 1), "results": results,
                    "curve": [{k: e[k] for k in ("step", "loss")} for e in events if e["event"] == "train"],
                    "evals": [{k: e[k] for k in ("step", "test_accuracy", "test_loss")}
                              for e in events if e["event"] == "eval"],
                    "analysis": self._analyse(results["checkpoint"], analyse)}

        return self._record(suite, path, make)

    def _analyse(self, checkpoint: str, analyse: Optional[Callable]) -> dict[str, Any]:
        """Scores every run needs (train and test accuracy, confusion), plus the suite's own analysis of
        the readout features (computed once: the predictions are the classifier applied to them)."""
        snapshot = load_checkpoint(Path(checkpoint))
        config = trained_config(snapshot, checkpoint)
        train, test = self.data
        view = SequenceView.from_config(config, test.images, TrainState.from_checkpoint(snapshot).pixel_order)
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
        }
        if analyse:
            analysis.update(analyse(config, train_features, test_features))
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
                    "code": f"dist_rnn.experiments.{fn.__name__}({', '.join(map(repr, named))})",
                    "machine": machine(), "started": started, "seconds": round(time.perf_counter() - start, 1),
                    "values": values}

        return self._record(suite, self._path("measure", f"{name}-s{seed}", [name, seed]), make)

    def seeds(self) -> range:
        return range(self.c.seeds)


def readout_features(model: nn.Module, view: SequenceView, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """What the classifier reads for each image, in batches."""
    with torch.no_grad():
        return torch.cat([model.features(view(images[i:i + batch])) for i in range(0, len(images), batch)])


def fit_linear(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
               epochs: int = 300, lr: float = 0.01) -> float:
    """Test accuracy of a softmax-regression probe trained full-batch on the given features (its
    initial weights seeded, so a rerun gives the same figure)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        probe = nn.Linear(x_train.shape[1], 10)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(probe((x_train - mean) / std), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        return float((probe((x_test - mean) / std).argmax(1) == y_test).float().mean())


# ---------------------------------------------------------------------------------------------
# Measurements (in-process; each returns a JSON-able dict)


def baseline(kind: str, lab: "Lab", seed: int) -> dict[str, Any]:
    """A non-recurrent model on the flattened 784 pixels, trained like the presets (batch 100, 2 epochs, Adam)."""
    train, test = lab.data
    torch.manual_seed(seed)
    if kind == "logreg":
        model: nn.Module = nn.Linear(784, 10)
    else:
        model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    x, y = train.images.reshape(len(train), -1).float() / 255, train.labels
    start = time.perf_counter()
    for epoch in range(2):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, len(x) - 99, 100):
            idx = order[i:i + 100]
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model(test.images.reshape(len(test), -1).float() / 255).argmax(1) == test.labels).float().mean()
    return {"test_accuracy": float(accuracy), "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1)}


def lstm_anatomy(seed: int) -> dict[str, Any]:
    """nn.LSTM(28, 128, num_layers=2)'s parameters, and its forward written out by hand from them."""
    torch.manual_seed(seed)
    lstm = nn.LSTM(28, 128, num_layers=2, batch_first=True)
    shapes = [[name, list(p.shape), p.numel()] for name, p in lstm.named_parameters()]
    x = torch.rand(4, 28, 28)
    with torch.no_grad():
        layer_input = x
        for layer in range(2):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
            b = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            h = c = torch.zeros(len(x), 128)
            outputs = []
            for t in range(layer_input.shape[1]):  # one time step (one row of the image) at a time
                i, f, g, o = (layer_input[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=1)  # PyTorch's gate order
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # forget some, write some
                h = torch.sigmoid(o) * torch.tanh(c)  # expose some
                outputs.append(h)
            layer_input = torch.stack(outputs, dim=1)  # the next layer reads this layer's outputs
        library = lstm(x)[0]
    return {"parameters": shapes, "total": sum(n for _, _, n in shapes),
            "max_diff_by_hand_vs_library": float((layer_input - library).abs().max())}


def batch_first_check(seed: int) -> dict[str, Any]:
    """The same weights with batch_first=True and False: outputs on transposed input, and step time."""
    torch.manual_seed(seed)
    first = nn.LSTM(28, 128, 2, batch_first=True)
    second = nn.LSTM(28, 128, 2, batch_first=False)
    second.load_state_dict(first.state_dict())  # batch_first is not a weight: the state dicts match
    x = torch.rand(100, 28, 28)  # (batch, time, features)
    with torch.no_grad():
        out_first = first(x)[0]
        out_second = second(x.transpose(0, 1).contiguous())[0].transpose(0, 1)  # (time, batch, features) in
    layouts = {"batch_first=True, (B, T, F) input": (first, x),
               "batch_first=False, (T, B, F) contiguous input": (second, x.transpose(0, 1).contiguous()),
               "batch_first=False, (B, T, F) input transposed as a view": (second, x.transpose(0, 1))}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(5):  # alternate the layouts: this machine's speed drifts
        for name, (lstm, data) in layouts.items():
            start = time.perf_counter()
            for _ in range(10):
                lstm(data)[0].sum().backward()
            times[name].append((time.perf_counter() - start) / 10 * 1000)
    return {"same_state_dict_keys": list(first.state_dict()) == list(second.state_dict()),
            "max_abs_output_difference": float((out_first - out_second).abs().max()),
            "ms_per_forward_backward": {name: statistics.median(t) for name, t in times.items()},
            "runs_ms": times}


def dropout_check(seed: int) -> dict[str, Any]:
    """Where nn.LSTM's dropout acts: reproduced by hand, and its effect on a 1-layer net."""
    torch.manual_seed(seed)
    x = torch.rand(100, 28, 28)
    stacked = nn.LSTM(28, 128, 2, batch_first=True, dropout=0.5).train()
    # The same network as two 1-layer LSTMs with an ordinary F.dropout between them.
    lower, upper = nn.LSTM(28, 128, 1, batch_first=True), nn.LSTM(128, 128, 1, batch_first=True)
    lower.load_state_dict({k: v for k, v in stacked.state_dict().items() if "_l0" in k})
    upper.load_state_dict({k.replace("_l1", "_l0"): v for k, v in stacked.state_dict().items() if "_l1" in k})
    with torch.no_grad():
        torch.manual_seed(seed + 1)
        library = stacked(x)[0]
        torch.manual_seed(seed + 1)
        by_hand = upper(F.dropout(lower(x)[0], p=0.5, training=True))[0]
        again = stacked(x)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that dropout does nothing with one layer: we show it
            single = nn.LSTM(28, 128, 1, batch_first=True, dropout=0.5).train()
        stacked.eval()
        return {
            "max_diff_library_vs_by_hand": float((library - by_hand).abs().max()),
            "top_layer_output_zero_fraction": float((library == 0).float().mean()),
            "max_diff_two_training_calls": float((library - again).abs().max()),
            "max_diff_two_eval_calls": float((stacked(x)[0] - stacked(x)[0]).abs().max()),
            "one_layer_max_diff_two_training_calls": float((single(x)[0] - single(x)[0]).abs().max()),
        }


def loss_gradients(seed: int) -> dict[str, Any]:
    """|dL/dlogits| for cross-entropy and for MSE on softmax outputs, as a prediction gets confidently wrong."""
    rows = []
    for margin in [0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0]:
        logits = torch.zeros(1, 10)
        logits[0, 3] = margin  # class 3 predicted with this margin; the true class is 0
        target = torch.tensor([0])
        grads = {}
        for loss in ("ce", "mse"):
            z = logits.clone().requires_grad_(True)
            value = F.cross_entropy(z, target) if loss == "ce" else \
                F.mse_loss(torch.softmax(z, 1), F.one_hot(target, 10).float())
            value.backward()
            grads[loss] = float(z.grad.norm())
        rows.append({"margin": margin, "p_true": float(torch.softmax(logits, 1)[0, 0]),
                     "ce_grad_norm": grads["ce"], "mse_grad_norm": grads["mse"]})
    return {"rows": rows}


# ---------------------------------------------------------------------------------------------
# Suite analyses of trained models


def half_probes(lab: "Lab", config: TrainConfig, x_train: torch.Tensor, x_test: torch.Tensor) -> dict[str, Any]:
    """Accuracy of a linear probe on each direction's half of a bidirectional readout."""
    train, test = lab.data
    h = config.hidden_size
    y_train, y_test = train.labels[:PROBE_SAMPLES], test.labels
    return {"probe_forward_half": fit_linear(x_train[:, :h], y_train, x_test[:, :h], y_test),
            "probe_backward_half": fit_linear(x_train[:, h:], y_train, x_test[:, h:], y_test),
            "probe_both": fit_linear(x_train, y_train, x_test, y_test)}


def lstm_like_hidden(cell: str, target_params: int) -> int:
    """The hidden size that gives a 2-layer `cell` classifier the parameter count closest to `target_params`
    (the count grows with the hidden size: bisect for the first size that reaches it)."""
    low, high = 1, 1024
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if parameters(cell, mid) < target_params else (low, mid)
    return min((low - 1, low), key=lambda h: abs(parameters(cell, h) - target_params))


def parameters(cell: str, hidden: int, layers: int = 2, inputs: int = 28, bidirectional: bool = False) -> int:
    from dist_rnn.model import RNNClassifier

    return sum(p.numel() for p in RNNClassifier(inputs, hidden, layers, 10, cell, bidirectional).parameters())


# ---------------------------------------------------------------------------------------------
# Suites: each trains or measures what it needs (through the cache) and returns its report section


def mean_spread(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """'97.41 ± 0.12': the mean and half the range over seeds (in percent by default)."""
    values = [v * scale for v in values]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def pct(values: list[float]) -> str:
    """For prose: '97.41 % (± 0.12)'."""
    mean, spread = mean_spread(values).split(" ± ")
    return f"{mean} % (± {spread})"


def accuracies(records: list[dict]) -> list[float]:
    return [r["results"]["test_accuracy"] for r in records]


class Report:
    """Markdown and figures of docs/experiments.md."""

    def __init__(self, path: Path):
        self.path = path
        self.figures = path.parent / "experiments"
        self.figures.mkdir(parents=True, exist_ok=True)
        self.parts: list[str] = []
        self.written: list[Path] = []

    def add(self, text: str, at_start: bool = False) -> None:
        self.parts.insert(0 if at_start else len(self.parts), text.strip("\n") + "\n")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
        self.add("\n".join(lines))

    def figure(self, name: str, fig: Any, caption: str) -> None:
        path = self.figures / f"{name}.png"
        fig.tight_layout()
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
        pyplot().close(fig)
        self.written.append(path)
        self.add(f"![{caption}](experiments/{name}.png)\n\n*{caption}*")

    def write(self) -> None:
        atomic_write(self.path, lambda fh: fh.write("\n".join(self.parts).encode()))


def missing(report: Report, suite: str) -> None:
    report.add(f"*Not measured yet: run `python -m dist_rnn.experiments {suite}`.*")


def runs(lab: Lab, suite: str, name: str, args: tuple[str, ...], analyse: Optional[Callable] = None) -> list[dict]:
    """The run `args` at every seed (the cached ones, and the others trained now when allowed)."""
    records = [lab.train(suite, name, args, seed, analyse) for seed in lab.seeds()]
    return [r for r in records if r]


def accuracy_curve(record: dict) -> tuple[list[int], list[float]]:
    """The steps a run was scored at, and its test accuracy there (for plotting)."""
    return [e["step"] for e in record["evals"]], [e["test_accuracy"] for e in record["evals"]]


def steps_to(record: dict, accuracy: float) -> Optional[int]:
    """The first scored step at which the test accuracy reached `accuracy` (None: never)."""
    return next((e["step"] for e in record["evals"] if e["test_accuracy"] >= accuracy), None)


def steps_text(records: list[dict], accuracy: float = 0.9) -> str:
    """'150 / 200': steps to `accuracy` for each seed ('never' where the run did not get there)."""
    return " / ".join(str(steps_to(r, accuracy) or "never") for r in records)


def suite_easy(lab: Lab, report: Report) -> None:
    report.add("## Why is MNIST so easy for an RNN?")
    lstm = runs(lab, "easy", "lstm-curve", LSTM + ("--eval-every", "50"))
    base = {kind: [m["values"] for m in (lab.measure("easy", f"baseline-{kind}", s, baseline, kind, lab)
                                         for s in lab.seeds()) if m]
            for kind in ("logreg", "mlp")}
    if not lstm or not all(base.values()):
        return missing(report, "easy")
    plt = pyplot()
    report.add("The `seed-lstm` preset (2-layer LSTM, hidden 128, batch 100, Adam 0.01, 2 epochs), scored on "
               "the full test set every 50 steps, against two models that ignore the sequence entirely and "
               "read the 784 pixels at once (same batch, 2 epochs, Adam 0.001):")
    report.table(["model", "parameters", "test accuracy % (2 epochs)", "steps to 90 % test accuracy"], [
        ["logistic regression (784 -> 10)", base["logreg"][0]["parameters"],
         mean_spread([b["test_accuracy"] for b in base["logreg"]]), "-"],
        ["MLP (784 -> 128 -> 10, ReLU)", base["mlp"][0]["parameters"],
         mean_spread([b["test_accuracy"] for b in base["mlp"]]), "-"],
        ["2-layer LSTM over 28 rows (`seed-lstm`)", parameters("lstm", 128),
         mean_spread(accuracies(lstm)), steps_text(lstm)],
    ])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for r in lstm:
        ax.plot(*accuracy_curve(r), marker=".",
                label=f"LSTM seed {r['seed']}")
    for kind, label in (("logreg", "logistic regression"), ("mlp", "MLP")):
        ax.axhline(statistics.mean(b["test_accuracy"] for b in base[kind]), ls="--", lw=1, color="gray")
        ax.text(20, statistics.mean(b["test_accuracy"] for b in base[kind]), f"{label} (2 epochs)", va="bottom",
                ha="left", fontsize=8)
    ax.axvline(600, color="k", lw=0.5)
    ax.set(xlabel="optimizer step (600 = one epoch)", ylabel="test accuracy", ylim=(0.5, 1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    report.figure("easy-curve", fig, "Test accuracy of the LSTM preset during training, with the two "
                  "pixel-level baselines for scale.")
    first = lstm[0]
    confusion = np.array(first["analysis"]["confusion"])
    fig, ax = plt.subplots(figsize=(4.6, 4))
    shown = confusion.copy()
    np.fill_diagonal(shown, 0)
    ax.imshow(shown, cmap="Reds")
    for i in range(10):
        for j in range(10):
            if confusion[i, j] and i != j:
                ax.text(j, i, confusion[i, j], ha="center", va="center", fontsize=7)
    ax.set(xlabel="predicted", ylabel="true digit", xticks=range(10), yticks=range(10))
    report.figure("easy-confusion", fig, f"Errors of the LSTM (seed {first['seed']}) on the 10,000 test digits "
                  "by true and predicted class (the diagonal, the correct ones, left blank).")
    _, test = lab.data
    wrong = first["analysis"]["misclassified"][:24]
    fig, axes = plt.subplots(3, 8, figsize=(8, 3.4))
    for ax, (index, true, pred) in zip(axes.flat, wrong):
        ax.imshow(test.images[index].numpy(), cmap="gray")
        ax.set_title(f"{true} -> {pred}", fontsize=8)
        ax.axis("off")
    report.figure("easy-misclassified", fig, "The first 24 misclassified test digits (true -> predicted).")
    per_class = confusion.diagonal() / confusion.sum(1)
    worst = [int(i) for i in np.argsort(per_class)[:2]]
    pair = np.unravel_index(np.argmax(shown), shown.shape)
    report.add(
        f"**Answer.** MNIST is easy for almost any model: a linear classifier on raw pixels already reaches "
        f"{pct([b['test_accuracy'] for b in base['logreg']])} and a one-hidden-layer MLP "
        f"{pct([b['test_accuracy'] for b in base['mlp']])} in the same two epochs, because the digits "
        f"are size-normalised, centred and nearly separable pixel by pixel. The LSTM reaches 90 % after "
        f"{steps_text(lstm)} steps (seeds), about "
        f"{statistics.mean(steps_to(r, 0.9) or 1200 for r in lstm) * 100 / 60000:.2f} epochs, and ends at "
        f"{pct(accuracies(lstm))}: reading 28 rows in order is enough to carry the shape of a digit in a "
        f"128-unit state. Its errors concentrate on a few shapes: its weakest classes are {worst[0]} "
        f"({per_class[worst[0]]:.1%} right) and {worst[1]} ({per_class[worst[1]]:.1%}), the most frequent confusion "
        f"is a true {pair[0]} read as {pair[1]} ({shown[pair]} times). Some of the misclassified digits above are hard "
        f"to read even for a person; others are plain mistakes.")


def suite_anatomy(lab: Lab, report: Report) -> None:
    report.add("## What are `nn.LSTM`'s parameters, and how is its forward written?")
    record = lab.measure("anatomy", "lstm-anatomy", 0, lstm_anatomy)
    if not record:
        return missing(report, "anatomy")
    v = record["values"]
    report.add("`nn.LSTM(28, 128, num_layers=2)`, the presets' recurrent part: `input_size=28` pixels per step, "
               "`hidden_size=128` units, two stacked layers. Its parameters:")
    report.table(["parameter", "shape", "count"], [[f"`{name}`", "x".join(map(str, shape)), n]
                                                   for name, shape, n in v["parameters"]] + [["total", "", v["total"]]])
    report.add(
        "Each weight matrix stacks four blocks of 128 rows, in PyTorch's order: input gate `i`, forget gate `f`, "
        "candidate `g`, output gate `o`; `weight_ih` reads the step's input, `weight_hh` the previous hidden state, "
        "and the two biases are simply added. The forward pass, written out from those parameters "
        "(`dist_rnn.experiments.lstm_anatomy`):\n\n"
        "```python\n"
        "for t in range(28):                      # one row of the image per step\n"
        "    i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + b_ih + b_hh).chunk(4, dim=1)\n"
        "    c = sigmoid(f) * c + sigmoid(i) * tanh(g)   # forget some of the cell, write some\n"
        "    h = sigmoid(o) * tanh(c)                    # expose some of it\n"
        "    outputs.append(h)                           # the next layer reads these\n"
        "```")
    report.add(
        f"**Answer.** The {v['total']:,} parameters are two sets of four gate matrices per layer; the loop above, run "
        f"for both layers, reproduces `nn.LSTM`'s output to within {v['max_diff_by_hand_vs_library']:.1e}. "
        "The classifier then reads one vector per image (dist_rnn's `RNNClassifier.features`: the last step's "
        "output, or each direction's final state) into a `Linear(128, 10)`.")


def suite_batch_first(lab: Lab, report: Report) -> None:
    report.add("## What does `batch_first` change?")
    checks = [m["values"] for m in (lab.measure("batch_first", "batch-first-check", s, batch_first_check)
                                    for s in lab.seeds()) if m]
    if not checks:
        return missing(report, "batch_first")
    layouts = list(checks[0]["ms_per_forward_backward"])
    report.add("Two `nn.LSTM(28, 128, num_layers=2)` with the same weights, one `batch_first=True` fed "
               "(batch, time, features) and one `batch_first=False` fed the transposed (time, batch, features) "
               "tensor; then forward + backward time of a batch of 100 (median of 5 x 10 calls, alternated):")
    report.table(["seed", "same state_dict keys", "max |output difference|", *[f"ms: {l}" for l in layouts]], [
        [s, c["same_state_dict_keys"], f"{c['max_abs_output_difference']:.1e}",
         *[f"{c['ms_per_forward_backward'][l]:.1f}" for l in layouts]] for s, c in zip(lab.seeds(), checks)])
    diffs = [c["max_abs_output_difference"] for c in checks]
    times = {l: statistics.mean(c["ms_per_forward_backward"][l] for c in checks) for l in layouts}
    ratio = times[layouts[0]] / times[layouts[1]]
    report.add(
        f"**Answer.** `batch_first` is a layout flag only: it has no weights (the state dicts have the same keys "
        f"and load into each other), and the same weights give "
        f"{'bit-for-bit identical outputs' if max(diffs) == 0 else f'outputs equal to within {max(diffs):.1e}'} on "
        f"transposed input. PyTorch's kernels (cuDNN, oneDNN) work time-major; with `batch_first=True` the "
        f"input is transposed for them, which here costs {ratio:.2f}x the time of feeding (time, batch, features) "
        f"directly ({times[layouts[0]]:.1f} vs {times[layouts[1]]:.1f} ms per forward + backward), within this "
        f"machine's noise. In practice `batch_first=True` is the common choice, because data loaders and most "
        f"other layers are batch-major; dist_rnn uses it (`dist_rnn/model.py`).")


def suite_dropout(lab: Lab, report: Report) -> None:
    report.add("## How does dropout work inside an RNN, and does it help here?")
    check = [m["values"] for m in (lab.measure("dropout", "dropout-check", s, dropout_check) for s in lab.seeds()) if m]
    variants = [("none", LSTM), ("nn.LSTM dropout 0.2", LSTM + ("--dropout", "0.2")),
                ("nn.LSTM dropout 0.5", LSTM + ("--dropout", "0.5")),
                ("dropout 0.5 before the classifier", LSTM + ("--head-dropout", "0.5"))]
    results = {name: runs(lab, "dropout", f"lstm-dropout-{i}", args) for i, (name, args) in enumerate(variants)}
    if not check or not all(results.values()):
        return missing(report, "dropout")
    c = check[0]
    report.add(
        f"What `nn.LSTM(..., num_layers=2, dropout=0.5)` does, measured (seed {lab.seeds()[0]}): the same network "
        f"built by hand as two 1-layer LSTMs with an ordinary `F.dropout(p=0.5)` on the first layer's whole "
        f"output sequence gives the same output to within {c['max_diff_library_vs_by_hand']:.1e} (same random "
        f"stream); the top layer's output has {c['top_layer_output_zero_fraction']:.1%} zeros (it is not dropped); "
        f"two training-mode calls differ by up to {c['max_diff_two_training_calls']:.3f}, two eval-mode calls by "
        f"{c['max_diff_two_eval_calls']:.1e}; and with one layer `dropout=0.5` changes nothing (two training-mode "
        f"calls differ by {c['one_layer_max_diff_two_training_calls']:.1e}; torch warns about it).")
    rows = []
    for name, records in results.items():
        train_acc = [r["analysis"]["train_accuracy"] for r in records]
        rows.append([name, mean_spread(accuracies(records)), mean_spread(train_acc),
                     mean_spread([t - a for t, a in zip(train_acc, accuracies(records))])])
    report.add("Training with each (`seed-lstm` preset otherwise; train accuracy on the first "
               f"{PROBE_SAMPLES:,} training images, in eval mode):")
    report.table(["dropout", "test accuracy %", "train accuracy %", "train - test gap, points"], rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    names = list(results)
    for offset, (label, key) in enumerate((("train", "train"), ("test", "test"))):
        values = [statistics.mean(r["analysis"][f"{key}_accuracy"] for r in results[n]) for n in names]
        ax.bar(np.arange(len(names)) + offset * 0.4 - 0.2, values, width=0.4, label=label)
    ax.set_xticks(range(len(names)), [n.replace(" before", "\nbefore") for n in names], fontsize=8)
    ax.set(ylabel="accuracy", ylim=(0.9, 1.0))
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    report.figure("dropout", fig, "Train and test accuracy of the LSTM preset with each kind of dropout "
                  "(mean over seeds).")
    means = {n: statistics.mean(accuracies(rs)) for n, rs in results.items()}
    best, worst = max(means, key=means.get), min(means, key=means.get)
    gap = {n: statistics.mean(r["analysis"]["train_accuracy"] - r["results"]["test_accuracy"] for r in rs)
           for n, rs in results.items()}
    low = min(results[worst], key=lambda r: r["results"]["test_accuracy"])
    first, last = low["evals"][0]["test_accuracy"], low["results"]["test_accuracy"]
    unstable = (f": one of its seeds fell from {first:.2%} after the first epoch to {last:.2%} after the second, "
                "unstable at this learning rate (Adam 0.01)") if last < first else ""
    report.add(
        "**Answer.** RNN dropout is ordinary dropout applied to the outputs of every layer but the last, at every "
        "time step with a fresh mask, and never to the recurrent connection from one step to the next nor to "
        "the last layer's output (that is what a classifier head's dropout is for). It is not 'variational' "
        "dropout (one mask per sequence). Here it cannot help much: in two epochs the model does not overfit "
        f"(train and test accuracy differ by {gap['none'] * 100:.2f} points without dropout), so there is little "
        f"for dropout to fix. The best variant, '{best}', scored {pct(accuracies(results[best]))} against "
        f"{pct(accuracies(results['none']))} without, within the spread across seeds; the worst, '{worst}', "
        f"scored {pct(accuracies(results[worst]))}{unstable}.")


def suite_bidirectional(lab: Lab, report: Report) -> None:
    report.add("## How is a bidirectional RNN used, and is 98 % for the BiLSTM good?")
    probes = functools.partial(half_probes, lab)
    one_layer = ("--num-layers", "1")
    found = {"LSTM (`seed-lstm`)": runs(lab, "bidirectional", "lstm", LSTM),
             "BiLSTM, `out[:, -1, :]` (`seed-bilstm`)": runs(lab, "bidirectional", "bilstm-last", BILSTM, probes),
             "BiLSTM, `--readout final`": runs(lab, "bidirectional", "bilstm-final", BILSTM + ("--readout", "final"),
                                               probes),
             "1-layer BiLSTM, `out[:, -1, :]`": runs(lab, "bidirectional", "bilstm1-last", BILSTM + one_layer, probes),
             "1-layer BiLSTM, `--readout final`": runs(lab, "bidirectional", "bilstm1-final",
                                                       BILSTM + one_layer + ("--readout", "final"), probes)}
    if not all(found.values()):
        return missing(report, "bidirectional")
    uni, last, final, last1, final1 = found.values()
    report.add(
        "`nn.LSTM(bidirectional=True)` runs a second LSTM over the reversed sequence and concatenates the two "
        "outputs at each step: `out[:, t, :H]` is the forward state after rows 0..t, `out[:, t, H:]` the "
        "backward state after rows 27..t. The original script reads `out[:, -1, :]`: the forward half has read "
        "the whole image, the backward half has taken one step. `--readout final` uses each direction's final "
        "state (`h_n`) instead. A linear probe fitted on each half of the readout "
        f"({PROBE_SAMPLES:,} training images, scored on the test set) shows what each half knows "
        "(`seed-bilstm` recipe, 2 layers unless said):")
    layers = {name: (1 if name.startswith("1-layer") else 2) for name in found}
    rows = []
    for name, records in found.items():
        bi = "BiLSTM" in name
        probe = lambda half: mean_spread([r["analysis"][f"probe_{half}_half"] for r in records]) if bi else "-"  # noqa
        rows.append([name, parameters("lstm", 128, layers[name], bidirectional=bi), mean_spread(accuracies(records)),
                     probe("forward"), probe("backward")])
    report.table(["model", "parameters", "test accuracy %", "probe on forward half %",
                  "probe on backward half %"], rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels = ["LSTM", "BiLSTM\nlast", "BiLSTM\nfinal", "1-layer\nlast", "1-layer\nfinal"]
    ax.bar(labels, [statistics.mean(accuracies(r)) for r in found.values()], color="C0", label="model")
    for i, records in enumerate(list(found.values())[1:], start=1):
        for half, dx, color in (("forward", -0.15, "C1"), ("backward", 0.15, "C3")):
            ax.scatter([i + dx], [statistics.mean(r["analysis"][f"probe_{half}_half"] for r in records)],
                       color=color, zorder=3, label=f"probe: {half} half" if i == 1 else None)
    ax.set(ylabel="test accuracy", ylim=(0, 1))
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    report.figure("bidirectional", fig, "Test accuracy of the uni- and bidirectional models, and of linear probes "
                  "on each half of the BiLSTM's readout (mean over seeds).")
    back = {key: statistics.mean(r["analysis"]["probe_backward_half"] for r in records)
            for key, records in (("last", last), ("final", final), ("last1", last1), ("final1", final1))}
    fwd1 = statistics.mean(r["analysis"]["probe_forward_half"] for r in last1)
    moved = abs(statistics.mean(accuracies(last1)) - statistics.mean(accuracies(final1))) * 100
    report.add(
        f"**Answer.** With one layer the flaw is plain: the backward half of `out[:, -1, :]` has read only the last "
        f"row, and a probe on it scores {back['last1']:.1%} (chance is about 10 %), against {back['final1']:.1%} for "
        f"the backward half of `--readout final`. Yet the model's accuracy "
        + ("hardly moves" if moved < 1 else "changes")
        + f" ({pct(accuracies(last1))} with `out[:, -1, :]`, {pct(accuracies(final1))} with `--readout final`): on "
        f"MNIST the forward half alone carries the answer (a probe on it scores {fwd1:.1%}), so the classifier "
        "learns to ignore the useless half, and the second direction is wasted rather than harmful. In the "
        "two-layer preset the flaw is mostly hidden: the top backward direction has taken only one step, but its "
        "input at that step is the first layer's output, whose forward half has already read every row, so a "
        f"probe on it scores {back['last']:.1%}; the preset scores {pct(accuracies(last))} with `out[:, -1, :]` and "
        f"{pct(accuracies(final))} with `--readout final`, against {pct(accuracies(uni))} for the unidirectional "
        "LSTM. So a bidirectional forward is written as: run both directions, then read each where it has seen "
        "the whole sequence (`h_n`, or `out[:, -1, :H]` with `out[:, 0, H:]`). And 98 % is not remarkable on "
        "MNIST: the plain MLP above is within a few points, and convolutional networks have gone beyond 99 % "
        "since LeCun et al. (1998); it is what a recurrent reader of rows gets in two epochs.")


def suite_cells(lab: Lab, report: Report) -> None:
    report.add("## The kinds of RNN: plain RNN, GRU, LSTM")
    target = parameters("lstm", 128)
    # (cell, hidden, learning rate): the recipe's Adam 0.01, and the plain RNN once more at 0.001
    configs = [("lstm", 128, "0.01"), ("gru", 128, "0.01"), ("rnn", 128, "0.01"),
               ("gru", lstm_like_hidden("gru", target), "0.01"), ("rnn", lstm_like_hidden("rnn", target), "0.01"),
               ("rnn", 128, "0.001")]

    def args(cell: str, h: int, lr: str) -> tuple[str, ...]:
        if (cell, h, lr) == ("lstm", 128, "0.01"):
            return LSTM  # the preset itself: shared with the other suites
        return LSTM + ("--cell", cell, "--hidden-size", str(h)) + (() if lr == "0.01" else ("--lr", lr))

    results = {key: runs(lab, "cells", f"{key[0]}-{key[1]}" + ("" if key[2] == "0.01" else f"-lr{key[2]}"),
                         args(*key)) for key in configs}
    if not all(results.values()):
        return missing(report, "cells")
    report.add("All with the `seed-lstm` recipe (2 layers, batch 100, Adam 0.01, 2 epochs), at the same hidden "
               "size and at about the LSTM's parameter count, and the plain RNN once more at Adam 0.001. A plain "
               "RNN has one tanh layer per unit, a GRU three gated parts (reset, update, candidate), an LSTM four "
               "(input, forget, output, candidate) and a separate cell state.")
    report.table(["cell", "hidden", "Adam lr", "parameters", "test accuracy %",
                  "training s, seed 0 (rough: a noisy machine)"], [
        [cell, h, lr, parameters(cell, h), mean_spread(accuracies(rs)), f"{rs[0]['results']['train_seconds']:.0f}"]
        for (cell, h, lr), rs in results.items()])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for cell, h, lr in configs:
        acc = accuracies(results[(cell, h, lr)])
        ax.errorbar([parameters(cell, h)], [statistics.mean(acc)], yerr=[[statistics.mean(acc) - min(acc)],
                    [max(acc) - statistics.mean(acc)]], fmt="o", capsize=3, label=f"{cell} h={h} lr {lr}")
    ax.set(xlabel="parameters", ylabel="test accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    report.figure("cells", fig, "Test accuracy against parameter count for each cell (mean, bars: min-max over seeds).")
    means = {key: statistics.mean(accuracies(rs)) for key, rs in results.items()}
    order = sorted(means, key=means.get, reverse=True)
    best_rnn = max((k for k in means if k[0] == "rnn"), key=means.get)
    failed = [k for k in means if k[0] == "rnn" and means[k] < 0.2]
    lstm = means[("lstm", 128, "0.01")]
    best_gru = max((k for k in means if k[0] == "gru"), key=means.get)
    failed_sizes = ", ".join(f"h={h}" for _, h, _ in failed)
    failed_runs = [r for key in failed for r in results[key]]
    failed_final = " / ".join(f"{r['curve'][-1]['loss']:.2f}" for r in failed_runs)
    failed_min = f"{min(p['loss'] for r in failed_runs for p in r['curve']):.2f}" if failed_runs else ""
    report.add(
        "**Answer.** Ranked by mean test accuracy: "
        + ", ".join(f"{cell} h={h} (lr {lr}) {mean_spread(accuracies(results[key])).split(' ± ')[0]} %"
                    for key in order for cell, h, lr in [key]) + ". "
        + (f"With the LSTM's learning rate the plain RNN ends at chance level ({failed_sizes}, about 10 %): its "
           f"training loss ends at {failed_final} (ln 10 = 2.30 is the loss of a uniform guess), and the lowest it "
           f"reached on the way was {failed_min}: training at this step size is unstable without gates. "
           if failed else "")
        + f"Its best here, h={best_rnn[1]} at Adam {best_rnn[2]}, reaches {means[best_rnn] * 100:.2f} %, "
        f"{(lstm - means[best_rnn]) * 100:.2f} points below the LSTM; the best GRU reaches {means[best_gru] * 100:.2f} "
        "%. The gates decide, per unit and step, what to keep and what to write, which is what lets the error "
        "signal reach the first rows" + (" and lets the gated cells train at a step size that breaks the plain RNN."
                                         if failed else "."))


def suite_views(lab: Lab, report: Report) -> None:
    report.add("## Sequence views: rows, columns, pixels, permuted pixels")
    views = ["row", "column", "pixel", "permuted"]
    results = {v: runs(lab, "views", f"view-{v}", VIEW_BUDGET + ("--sequence", v)) for v in views}
    if not all(results.values()):
        return missing(report, "views")
    budget = " ".join(VIEW_BUDGET)
    report.add(
        f"`--sequence row` (28 steps of 28 pixels, the default), `column` (the transposed image), `pixel` (784 "
        f"steps of 1 pixel) and `permuted` (784 steps in one fixed random pixel order, `--permutation-seed`, "
        f"stored in the config and the checkpoint). The pixel views are 28x longer, so on 2 CPU cores all four "
        f"get one small budget: `{budget}` (one pass over 20,000 images, a 1-layer LSTM of 64 units).")
    report.table(["view", "steps per image", "test accuracy %", "training s (seed 0)"], [
        [v, 28 if v in ("row", "column") else 784, mean_spread(accuracies(rs)),
         f"{rs[0]['results']['train_seconds']:.0f}"] for v, rs in results.items()])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for v in views:
        r = results[v][0]
        ax.plot(*accuracy_curve(r), marker=".", label=v)
    ax.set(xlabel="optimizer step", ylabel="test accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    report.figure("views", fig, "Test accuracy during training for each sequence view at the same small budget "
                  "(seed 0).")
    acc = {v: statistics.mean(accuracies(results[v])) for v in views}
    pixel_rate = statistics.mean(r["results"]["train_samples_per_s"] for r in results["pixel"])
    classes = {v: max(int((np.array(r["analysis"]["confusion"]).sum(0) > 0).sum()) for r in results[v]) for v in views}
    long_views = " and ".join(f"{v} {acc[v]:.1%} (at most {classes[v]} distinct class{'es' if classes[v] != 1 else ''} "
                              "predicted)"
                              for v in ("pixel", "permuted"))
    stuck = all(acc[v] < 0.2 for v in ("pixel", "permuted"))
    report.add(
        f"**Answer.** At equal budget the 28-step views learn (row {acc['row']:.1%}, column {acc['column']:.1%}: "
        "a column is as good a reading order as a row) while the 784-step views "
        + ("learn nothing at all within it: " if stuck else "learn far less: ") + long_views + ". "
        "One pixel per step, the net must carry information across hundreds of steps before the label says "
        "anything, and the error signal has to travel back as far; that is why pixel and permuted MNIST are the "
        "classic long-memory benchmarks. "
        + (f"At this budget permuted ({acc['permuted']:.1%}) is ahead of pixel ({acc['pixel']:.1%}), the reverse of "
           "the published full-length results; a likely reason, not measured here: in pixel order the last rows "
           "of an MNIST image are blank, so every answer must survive a long stretch of empty steps, while a "
           "permutation spreads informative pixels along the whole sequence. "
           if acc["permuted"] > acc["pixel"] else "")
        + "Published LSTM results, after many epochs, range from "
        "65 % to about 98.9 % on pixel MNIST and about 88-90 % on permuted MNIST (Le et al. 2015; Arjovsky et al. "
        "2016; Cooijmans et al. 2017; figures as summarised in this project's issue 8, not re-checked here: this "
        "machine has no internet). This setup differs in budget above all (one pass over a third of the training "
        "set, a 64-unit 1-layer LSTM); I did not reproduce the full-length numbers: no GPU was available to this "
        f"work, and even this small net trains at {pixel_rate:.0f} samples/s in the pixel view here, "
        f"{60000 / pixel_rate / 60:.0f} minutes per epoch.")


def suite_loss(lab: Lab, report: Report) -> None:
    report.add("## Cross-entropy or mean squared error?")
    ce = runs(lab, "loss", "lstm-curve", LSTM + ("--eval-every", "50"))
    mse = runs(lab, "loss", "lstm-mse-curve", LSTM + ("--eval-every", "50", "--loss", "mse"))
    grads = lab.measure("loss", "loss-gradients", 0, loss_gradients)
    if not (ce and mse and grads):
        return missing(report, "loss")
    rows = grads["values"]["rows"]
    report.add("Gradient of each loss with respect to the logits for one sample whose true class is 0 while "
               "class 3 leads by the given margin (computed with autograd):")
    report.table(["margin", "p(true class)", "|dL/dz| cross-entropy", "|dL/dz| MSE on softmax"],
                 [[r["margin"], f"{r['p_true']:.2e}", f"{r['ce_grad_norm']:.3f}", f"{r['mse_grad_norm']:.2e}"]
                  for r in rows])
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for records, name in ((ce, "cross-entropy"), (mse, "MSE on softmax")):
        for r in records:
            left.plot(*accuracy_curve(r),
                      color="C0" if name == "cross-entropy" else "C1", alpha=0.8,
                      label=name if r["seed"] == 0 else None)
    left.set(xlabel="optimizer step", ylabel="test accuracy", ylim=(0, 1), title="training (all seeds)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.semilogy([r["margin"] for r in rows], [r["ce_grad_norm"] for r in rows], marker="o", label="cross-entropy")
    right.semilogy([r["margin"] for r in rows], [r["mse_grad_norm"] for r in rows], marker="o", label="MSE on softmax")
    right.set(xlabel="margin of the wrong class (logits)", ylabel="|dL/dlogits|",
              title="gradient when confidently wrong")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    report.figure("loss", fig, "Left: test accuracy with each loss (`seed-lstm` otherwise). Right: gradient size "
                  "as a prediction gets confidently wrong.")
    report.table(["loss", "test accuracy % after 2 epochs", "steps to 90 %", "test accuracy % at step 100"], [
        [name, mean_spread(accuracies(records)), steps_text(records),
         mean_spread([at_step(r, 100) for r in records])]
        for name, records in (("cross-entropy", ce), ("MSE on softmax", mse))])
    worst = rows[-1]
    report.add(
        f"**Answer.** Yes, and it is measurable. With cross-entropy the gradient on the logits is `softmax - "
        f"one_hot`, whose size stays near {worst['ce_grad_norm']:.2f} however wrong the prediction is; with MSE on "
        f"softmax outputs it is multiplied by the softmax's Jacobian, which vanishes as the output saturates: at a "
        f"margin of {worst['margin']:.0f} it is {worst['mse_grad_norm']:.1e}, so a confidently wrong sample "
        "hardly teaches anything. That is the learning slowdown of the note. In training it shows, though "
        "modestly here, because Adam's steps do not depend on the overall size of the gradient (only the "
        "saturated samples' share of it shrinks): at step 100 the MSE runs score "
        f"{pct([at_step(r, 100) for r in mse])} against {pct([at_step(r, 100) for r in ce])}, they reach 90 % after "
        f"{steps_text(mse)} steps against {steps_text(ce)}, and end at {pct(accuracies(mse))} against "
        f"{pct(accuracies(ce))}.")


def at_step(record: dict, step: int) -> float:
    """Test accuracy at the first score at or after `step`."""
    return next(e["test_accuracy"] for e in record["evals"] if e["step"] >= step)


SUITE_FUNCTIONS = {"easy": suite_easy, "anatomy": suite_anatomy, "batch_first": suite_batch_first,
                   "dropout": suite_dropout,
                   "bidirectional": suite_bidirectional, "cells": suite_cells, "views": suite_views,
                   "loss": suite_loss}


def appendix(lab: Lab, report: Report) -> None:
    """Every record the report used: what ran, with which seed, where, when, and for how long."""
    report.add("## Appendix: the records behind every number")
    report.add(f"Each row is one JSON file in `{lab.c.cache_dir}/` (the full command, machine and results are in it).")
    seen, rows = set(), []
    for r in lab.used:
        key = (r["kind"], r["name"], r["seed"])
        if key in seen:
            continue
        seen.add(key)
        what = " ".join(r["command"][3:]) if r["kind"] == "train" else r["code"]
        rows.append([r["suite"], r["name"], r["seed"], f"`{what}`", r["started"], r["seconds"],
                     f"{r['machine']['cores']} x {r['machine']['cpu'] or 'CPU'}"])
    report.table(["suite", "record", "seed", "command / code", "started", "seconds", "machine"], rows)


def experiments(c: ExperimentsConfig, suites: list[str]) -> None:
    """Run (or take from the cache) the selected suites, then regenerate the whole report."""
    lab = Lab(c, suites)
    report = Report(Path(c.report))
    failed = []
    for name in SUITES:
        try:
            SUITE_FUNCTIONS[name](lab, report)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - one suite's bug must not cost the other suites' runs
            if os.environ.get("DIST_RNN_DEBUG"):
                traceback.print_exc()
            failed.append(f"{name} ({first_line(e)})")
            report.add(f"*The {name} section could not be written: {first_line(e)}.*")
    appendix(lab, report)
    # The header counts the records as they are now, after this invocation's runs: the same cache
    # gives the same report, whenever it is rendered.
    total = sum(r.get("seconds", 0) for r in (json.loads(p.read_text()) for p in Path(c.cache_dir).glob("*.json"))) \
        if Path(c.cache_dir).is_dir() else 0
    report.add(at_start=True, text=f"""# Experiments: what the study note asked, answered with measurements

Generated by `python -m dist_rnn.experiments` from the records in `{c.cache_dir}/` (do not edit by hand).
Rerun everything with `python -m dist_rnn.experiments --rerun --data-dir DIR` (about
{total / 60:.0f} minutes of runs on the machine in the appendix, {c.seeds} seeds per configuration), one suite with
`python -m dist_rnn.experiments SUITE`, or only the report with `--report-only`. Accuracies are
mean ± half the range over seeds, on the full 10,000-image test set.""")
    report.write()
    print(f"wrote {report.path} and {len(report.written)} figures in {report.figures}")
    if failed:
        raise UserError(f"suites that failed (their cached runs are kept): {', '.join(failed)}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m dist_rnn.experiments",
                            description=describe(__doc__))
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"suites to run (default: all): {', '.join(SUITES)}")
    add_dataclass_flags(parser, ExperimentsConfig)

    def command() -> None:
        args = vars(parser.parse_args(argv))
        suites = args.pop("suites") or list(SUITES)
        unknown = [s for s in suites if s not in SUITES]
        if unknown:
            raise UserError(f"unknown suite {unknown[0]!r} (choose from {', '.join(SUITES)})")
        c = ExperimentsConfig(**args)
        if c.seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {c.seeds}")
        experiments(c, suites)

    return run_cli("dist_rnn.experiments", command)


if __name__ == "__main__":
    sys.exit(main())
