"""Suite `cells`: LSTM, GRU and plain RNN, each at its own best learning rate, and their cost per step."""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dist_rnn.model import RNNClassifier
from dist_rnn.plot import pyplot
from experiments.lab import (Lab, Report, accuracies, accuracy_cell, best_rate, both_ways, collapsed, compare, holm,
                             lstm_at, lstm_like_hidden, lstm_runs, measures, parameters, runs)

RATES = {"lstm": ("0.001", "0.003", "0.01"), "gru": ("0.001", "0.003", "0.01"),
         "rnn": ("0.0003", "0.001", "0.003", "0.01")}  # Adam rates swept per cell (the plain RNN's lower)


def step_times(seed: int, repeats: int = 7, steps: int = 10) -> dict[str, Any]:
    """Milliseconds per training step (forward, backward, Adam) of each cell at the presets' shape
    (2 layers, hidden 128, batch 100, 28 steps), the cells interleaved so that drift hits all alike:
    the median of `repeats` rounds of `steps` steps."""
    x, y = torch.rand(100, 28, 28), torch.randint(0, 10, (100,))
    models = {name: RNNClassifier(28, 128, 2, 10, cell, bidirectional, readout="last")
              for name, cell, bidirectional in (("rnn", "rnn", False), ("gru", "gru", False), ("lstm", "lstm", False),
                                                ("bilstm", "lstm", True))}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(repeats + 1):  # the first round warms up, unrecorded
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                optimizers[name].zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizers[name].step()
            if round_:
                times[name].append((time.perf_counter() - start) / steps * 1000)
    return {"ms_per_step": {name: statistics.median(t) for name, t in times.items()},
            "threads": torch.get_num_threads()}


def suite(lab: Lab, report: Report) -> None:
    def at(cell: str, lr: str, sweep: bool, hidden: int = 128) -> list[dict]:
        if (cell, lr, hidden) == ("lstm", "0.01", 128):
            return lstm_runs(lab, "cells")  # the preset itself: shared with the other suites
        name = f"{cell}-{hidden}" + ("" if lr == "0.01" else f"-lr{lr}")
        return runs(lab, "cells", name, lstm_at(lr, cell, hidden), sweep=sweep)

    sweep_seeds = len(lab.seeds(sweep=True))
    sweep = {cell: {lr: at(cell, lr, sweep=True)[:sweep_seeds] for lr in rates} for cell, rates in RATES.items()}
    times = measures(lab, "cells", "step-times", step_times)
    if not all(all(by_lr.values()) for by_lr in sweep.values()):
        return report.missing("cells")
    # each cell's best rate by the sweep's mean, then that rate at every seed, and at the LSTM's size
    best = {cell: best_rate({lr: accuracies(rs) for lr, rs in by_lr.items()}) for cell, by_lr in sweep.items()}
    target = parameters("lstm", 128)
    sized = {cell: lstm_like_hidden(cell, target) for cell in ("gru", "rnn")}
    at_best = {cell: at(cell, lr, sweep=False) for cell, lr in best.items()}
    at_size = {cell: at(cell, best[cell], sweep=True, hidden=h) for cell, h in sized.items()}
    if not all(at_best.values()) or not all(at_size.values()) or not times:
        return report.missing("cells")
    ms = {cell: [t["ms_per_step"][cell] for t in times] for cell in times[0]["ms_per_step"]}
    draw(report, sweep, at_best, at_size)
    rows = [[cell, 128, lr, parameters(cell, 128), len(rs), accuracy_cell(rs)]
            for cell, by_lr in sweep.items() for lr, rs in by_lr.items()]
    ranked = sorted(at_best, key=lambda cell: statistics.mean(accuracies(at_best[cell])), reverse=True)
    report.section(
        "cells", best=best, ranked=ranked, seeds=len(at_best["lstm"]), sweep_seeds=sweep_seeds,
        acc={cell: statistics.mean(accuracies(rs)) for cell, rs in at_best.items()},
        pairs=both_ways(holm({(a, b): compare(accuracies(at_best[a]), accuracies(at_best[b]))
                              for a, b in itertools.combinations(at_best, 2)})),
        rnn_fast=[r for r in sweep["rnn"]["0.01"] if collapsed(r)],
        failed_final=" / ".join(f"{r['curve'][-1]['loss']:.2f}" for r in sweep["rnn"]["0.01"] if collapsed(r)),
        ms={cell: statistics.median(v) for cell, v in ms.items()}, threads=times[0]["threads"],
        sweep_table=report.table(["cell", "hidden", "Adam lr", "parameters", "seeds", "test accuracy %"], rows),
        best_table=report.table(
            ["cell", "hidden", "Adam lr (best of the sweep)", "parameters", "seeds", "test accuracy %"],
            [[cell, 128, best[cell], parameters(cell, 128), len(at_best[cell]), accuracy_cell(at_best[cell])]
             for cell in at_best] +
            [[cell, h, best[cell], parameters(cell, h), len(at_size[cell]), accuracy_cell(at_size[cell])]
             for cell, h in sized.items()]),
        time_table=report.table(["model (2 layers, hidden 128)", "ms per training step, median over seeds",
                                 "spread (min - max)", "relative to the LSTM"],
                                [[cell, f"{statistics.median(v):.1f}", f"{min(v):.1f} - {max(v):.1f}",
                                  f"{statistics.median(v) / statistics.median(ms['lstm']):.2f}x"]
                                 for cell, v in ms.items()]))


def draw(report: Report, sweep: dict[str, dict[str, list[dict]]], at_best: dict[str, list[dict]],
         at_size: dict[str, list[dict]]) -> None:
    """Left: test accuracy against the Adam rate, one dot per seed. Middle: each cell at its best
    rate. Right: the gap the text discusses, LSTM against GRU (and the GRU at the LSTM's parameter
    count), on an axis a few tenths of a point wide."""
    fig, (left, middle, right) = pyplot().subplots(1, 3, figsize=(12, 3.6), width_ratios=(3, 2, 2))
    for i, (cell, by_lr) in enumerate(sweep.items()):
        rates = [float(lr) for lr in by_lr]
        for lr, rs in by_lr.items():
            left.scatter([float(lr)] * len(rs), accuracies(rs), s=14, color=f"C{i}", alpha=0.8)
        left.plot(rates, [statistics.mean(accuracies(rs)) for rs in by_lr.values()], color=f"C{i}", label=cell)
    left.set(xscale="log", xlabel="Adam learning rate", ylabel="test accuracy", ylim=(0, 1),
             title="learning-rate sweep (dots: seeds; line: mean)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)

    def columns(ax, groups: dict[str, tuple[str, list[dict]]], title: str) -> None:
        for i, (label, (cell, rs)) in enumerate(groups.items()):
            values = accuracies(rs)
            ax.scatter(i + np.linspace(-0.1, 0.1, len(values)), values, s=14, color=f"C{list(sweep).index(cell)}")
            ax.hlines(statistics.mean(values), i - 0.2, i + 0.2, color="k", lw=1.5)
        ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
        ax.set(ylabel="test accuracy", title=title)
        ax.grid(alpha=0.3, axis="y")

    columns(middle, {cell: (cell, rs) for cell, rs in at_best.items()}, "each at its best rate (bars: mean)")
    zoom = {"lstm": ("lstm", at_best["lstm"]), "gru": ("gru", at_best["gru"])}
    if "gru" in at_size:
        zoom["gru, LSTM's\nparameter count"] = ("gru", at_size["gru"])
    columns(right, zoom, "LSTM against GRU, zoomed")
    report.draw("cells", fig)
