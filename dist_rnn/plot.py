"""`python -m dist_rnn.plot RUN_DIR [RUN_DIR ...] -o curves.png`: training loss and test accuracy
against the optimizer step, read from each run's metrics.jsonl, several runs overlaid and labelled;
`--confusion confusion.png` also draws the first run's test confusion matrix (from its results.json,
or from the JSON `evaluate --out` wrote, given in place of a run directory)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dist_rnn.cli import ArgumentParser, add_dataclass_flags, describe, prog, run_cli
from dist_rnn.config import option
from dist_rnn.errors import UserError
from dist_rnn.files import atomic_write


@dataclass
class PlotConfig:
    """Options of `python -m dist_rnn.plot` (the run directories are positional)."""

    output: str = option("curves.png", "image to write (.png, .pdf or .svg)")
    title: Optional[str] = option(None, "figure title")
    confusion: Optional[str] = option(None, "also draw the first run's test confusion matrix to this image")


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The events of one run's metrics.jsonl (a line cut short by a crash is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (is it a dist_rnn run directory?)")
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def run_label(run_dir: Path) -> str:
    """The run's --name when it has one, else its directory name."""
    try:
        name = json.loads((run_dir / "config.json").read_text()).get("name")
    except (OSError, ValueError):
        name = None
    return name or run_dir.name


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files only (no display needed: clusters, CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_scale(ax: Any) -> None:
    """A log y axis labelled in plain numbers (2.2, 0.05, not 2.2 x 10^0): matplotlib's LogFormatter
    decides which ticks get a label (minor ones too when the range is under a decade or two)."""
    from matplotlib import ticker

    class PlainLogFormatter(ticker.LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:g}"

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def plot_runs(run_dirs: list[Path], output: Path, title: Optional[str] = None) -> dict[str, Any]:
    """Draw loss (left) and test accuracy (right) per step; returns what was drawn, per run."""
    plt = pyplot()

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = {}
    for index, run_dir in enumerate(run_dirs):
        color = f"C{index}"  # one colour per run on both panels, whichever curves it has
        events = read_events(run_dir)
        train = [(e["step"], e["loss"]) for e in events if e.get("event") == "train"]
        # Test accuracy: each epoch's score without a validation split, the final one (a "test" event) with one.
        evals = [(e["step"], e["test_accuracy"]) for e in events if e.get("event") in ("eval", "test")
                 and "test_accuracy" in e]
        vals = [(e["step"], e["val_accuracy"]) for e in events if e.get("event") == "eval" and "val_accuracy" in e]
        if not train and not evals and not vals:
            raise UserError(f"{run_dir}: metrics.jsonl has no train or eval events yet")
        label = run_label(run_dir)
        # A marker where there are few points: a line of one point would not show.
        if train:
            loss_ax.plot(*zip(*train), label=label, marker="o" if len(train) < 20 else None, color=color)
        if evals:
            acc_ax.plot(*zip(*evals), marker="o", label=label, color=color)
        if vals:  # the validation curve, dashed, in the run's colour
            acc_ax.plot(*zip(*vals), linestyle="--", marker=".", label=f"{label} (validation)", color=color)
        # Where the run was resumed (metrics.jsonl's resume events), and on how many processes.
        resumes = [(e["step"], e.get("world_size")) for e in events if e.get("event") == "resume"]
        for step, world_size in resumes:
            for ax in (loss_ax, acc_ax):
                ax.axvline(step, color=color, linestyle=":", alpha=0.7)
            loss_ax.annotate(f"resumed, {world_size} proc.", (step, 1), xycoords=("data", "axes fraction"),
                             rotation=90, va="top", ha="right", fontsize="x-small", color=color)
        drawn[label] = {"train_points": len(train), "eval_points": len(evals), "resumes": len(resumes),
                        "final_accuracy": evals[-1][1] if evals else None, "val_points": len(vals)}
    loss_ax.set(xlabel="optimizer step", ylabel="training loss (global batch)", title="loss")
    acc_ax.set(xlabel="optimizer step", ylabel="accuracy", title="test accuracy (validation: dashed)")
    empty = {loss_ax: "no training loss recorded yet\n(the run is shorter than --log-every)",
             acc_ax: "no test-set score recorded yet"}
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        else:  # say why the panel is empty instead of leaving it blank (and matplotlib warning)
            ax.text(0.5, 0.5, empty[ax], ha="center", va="center", transform=ax.transAxes, color="gray")
    if loss_ax.get_legend_handles_labels()[0]:
        log_scale(loss_ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fmt = output.suffix.lstrip(".") or "png"
    atomic_write(output, lambda fh: fig.savefig(fh, format=fmt, dpi=120))
    plt.close(fig)
    return drawn


def plot_confusion(source: Path, output: Path) -> list[list[int]]:
    """The test confusion matrix (rows: true class) of a run's results.json or an evaluate --out file,
    counts in the cells, each row shaded by its share of the class."""
    path = source / "results.json" if source.is_dir() else source
    try:
        result = json.loads(path.read_text())
        confusion = result["test_confusion"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: no test confusion matrix (results.json of a finished run, or evaluate --out's "
                        "JSON)") from None
    classes = list(result.get("test_per_class", {}).get("classes", {})) or [str(k) for k in range(len(confusion))]
    plt = pyplot()
    size = min(12, 2 + 0.5 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size))
    shares = [[n / max(1, sum(row)) for n in row] for row in confusion]
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(confusion):
        for j, n in enumerate(row):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize="small",
                        color="white" if shares[i][j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=90 if max(map(len, classes)) > 3 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted class", ylabel="true class", title=f"test confusion matrix ({path.parent.name})")
    fig.tight_layout()
    atomic_write(output, lambda fh: fig.savefig(fh, format=output.suffix.lstrip(".") or "png", dpi=120))
    plt.close(fig)
    return confusion


def main(argv: Optional[list[str]] = None) -> int:
    parser = ArgumentParser(prog=prog("dist_rnn.plot"), description=describe(__doc__))
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with metrics.jsonl)")
    add_dataclass_flags(parser, PlotConfig, short={"output": "-o"})

    def command() -> None:
        args = vars(parser.parse_args(argv))
        runs = [Path(r) for r in args.pop("runs")]
        c = PlotConfig(**args)
        for name, value in (("output", c.output), ("confusion", c.confusion)):
            if value and Path(value).suffix.lower() not in (".png", ".pdf", ".svg"):
                raise UserError(f"`{name}` {value}: use a .png, .pdf or .svg name")
        if c.confusion:
            plot_confusion(runs[0], Path(c.confusion))
            print(f"wrote {c.confusion}")
            if runs[0].is_file():  # an evaluate --out file has no curves
                runs = runs[1:]
            if not runs:
                return
        drawn = plot_runs(runs, Path(c.output), c.title)
        for label, what in drawn.items():
            final = f", final test accuracy {what['final_accuracy']:.4f}" if what["final_accuracy"] is not None else ""
            resumed = f", resumed {what['resumes']} time(s) (dotted lines)" if what["resumes"] else ""
            final += f", {what['val_points']} validation points" if what["val_points"] else ""
            print(f"{label}: {what['train_points']} loss points, {what['eval_points']} accuracy points{final}{resumed}")
        print(f"wrote {c.output}")

    return run_cli(prog("dist_rnn.plot"), command)


if __name__ == "__main__":
    sys.exit(main())
