"""Suite `cells`: LSTM, GRU and plain RNN, each at its own learning rate (chosen on validation), and their cost
per step."""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dist_rnn.model import RNNClassifier
from dist_rnn.plot import pyplot
from experiments.lab import (
    LSTM_RATES,
    VAL_SIZE,
    Lab,
    Report,
    Selection,
    accuracies,
    accuracy_cell,
    collapsed,
    extensions_text,
    lstm_at,
    lstm_like_hidden,
    lstm_reference,
    measures,
    paired_text,
    parameters,
    pct,
    rate_name,
    runs,
    select,
)

RATES = {"lstm": LSTM_RATES, "gru": ("0.001", "0.003", "0.01"),
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
    def final(cell: str, lr: str, hidden: int = 128, sweep: bool = False) -> list[dict]:
        """A cell on the whole training set, scored once on the test set (seeds 0, 1, ...)."""
        if (cell, hidden) == ("lstm", 128):
            return lstm_reference(lab, "cells", lr)  # shared with the other suites
        return runs(lab, "cells", rate_name(f"{cell}-{hidden}", lr), lstm_at(lr, cell, hidden), sweep=sweep,
                    paired=not sweep)

    chosen = {cell: select(lab, "cells", f"{cell}-128", functools.partial(lstm_at, cell=cell), rates)
              for cell, rates in RATES.items()}
    times = measures(lab, "cells", "step-times", step_times)
    if not all(s.chosen for s in chosen.values()):
        return report.missing("cells")
    # each cell at its chosen rate on the whole training set, at the other cells' chosen rates (the plan's
    # shared-rate controls), and at the LSTM's parameter count
    best = {cell: s.chosen for cell, s in chosen.items()}
    target = parameters("lstm", 128)
    sized = {cell: lstm_like_hidden(cell, target) for cell in ("gru", "rnn")}
    at_best = {cell: final(cell, lr) for cell, lr in best.items()}
    controls = lab.plan.controls("cells", best, final)
    at_size = {cell: final(cell, best[cell], hidden=h, sweep=True) for cell, h in sized.items()}
    if not all(at_best.values()) or not all(at_size.values()) or not times or not all(controls.values()):
        return report.missing("cells")
    cmp = lab.plan.family("cells", {arm: accuracies(rs) for arm, rs in {**at_best, **controls}.items()}, best)
    ms = {cell: [t["ms_per_step"][cell] for t in times] for cell in times[0]["ms_per_step"]}
    draw(report, chosen, at_best, at_size)
    rows = [[cell, 128, lr, parameters(cell, 128), len(s.sweep[lr]), s.cell(lr)]
            for cell, s in chosen.items() for lr in s.sweep]
    ranked = sorted(at_best, key=lambda cell: statistics.mean(accuracies(at_best[cell])), reverse=True)
    rnn_fast = [r for r in chosen["rnn"].sweep["0.01"] if collapsed(r)]
    rnn_fast_test = sum(collapsed(r) for r in controls.get("rnn@0.01", []))
    report.section(
        "cells", best=best, ranked=ranked, seeds=len(at_best["lstm"]), sweep_seeds=len(lab.selection_seeds()),
        selection_seeds=lab.selection_span(), val_size=int(VAL_SIZE),
        acc={cell: statistics.mean(accuracies(rs)) for cell, rs in at_best.items()},
        cmp=cmp, paired={"lstm-gru": paired_text(cmp, "lstm_vs_gru", at_best["lstm"], at_best["gru"])},
        controls={arm: pct(accuracies(rs)) for arm, rs in controls.items()},
        rnn_fast=rnn_fast, rnn_fast_test=rnn_fast_test,
        failed_final=" / ".join(f"{r['curve'][-1]['loss']:.2f}" for r in rnn_fast),
        ms={cell: statistics.median(v) for cell, v in ms.items()}, threads=times[0]["threads"],
        sweep_table=report.table(["cell", "hidden", "Adam lr", "parameters", "seeds",
                                  "validation accuracy % (final weights)"], rows) + extensions_text(chosen),
        best_table=report.table(
            ["cell", "hidden", "Adam lr (chosen on validation)", "parameters", "seeds", "test accuracy %"],
            [[cell, 128, best[cell], parameters(cell, 128), len(at_best[cell]), accuracy_cell(at_best[cell])]
             for cell in at_best] +
            [[arm.split("@")[0], 128, f"{arm.split('@')[1]} (another cell's)", parameters(arm.split("@")[0], 128),
              len(rs), accuracy_cell(rs)] for arm, rs in controls.items()] +
            [[cell, h, best[cell], parameters(cell, h), len(at_size[cell]), accuracy_cell(at_size[cell])]
             for cell, h in sized.items()]),
        time_table=report.table(["model (2 layers, hidden 128)", "ms per training step, median over seeds",
                                 "spread (min - max)", "relative to the LSTM"],
                                [[cell, f"{statistics.median(v):.1f}", f"{min(v):.1f} - {max(v):.1f}",
                                  f"{statistics.median(v) / statistics.median(ms['lstm']):.2f}x"]
                                 for cell, v in ms.items()]))


def draw(report: Report, chosen: dict[str, Selection], at_best: dict[str, list[dict]],
         at_size: dict[str, list[dict]]) -> None:
    """Left: validation accuracy against the Adam rate, one dot per selection seed (then zoomed on the LSTM
    and GRU, whose rates lie a few tenths of a point apart). Middle: each cell
    at its chosen rate. Right: the gap the text discusses, LSTM against GRU (and the GRU at the LSTM's parameter
    count), on an axis a few tenths of a point wide."""
    fig, (left, zoomed, middle, right) = pyplot().subplots(1, 4, figsize=(15, 3.6), width_ratios=(3, 2.4, 2, 2))
    for ax, cells in ((left, list(chosen)), (zoomed, ["lstm", "gru"])):
        for cell in cells:
            selection, color = chosen[cell], f"C{list(chosen).index(cell)}"
            rates = sorted(selection.sweep, key=float)
            for lr in rates:
                ax.scatter([float(lr)] * len(selection.val(lr)), selection.val(lr), s=14, color=color, alpha=0.8)
            ax.plot([float(lr) for lr in rates], [statistics.mean(selection.val(lr)) for lr in rates], color=color,
                    label=cell)
        ax.set(xscale="log", xlabel="Adam learning rate")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    left.set(ylabel="validation accuracy", ylim=(0, 1), title="selection sweep (dots: seeds; line: mean)")
    zoomed.set(ylim=(0.95, 0.99), title="LSTM and GRU, zoomed")

    def columns(ax, groups: dict[str, tuple[str, list[dict]]], title: str) -> None:
        for i, (label, (cell, rs)) in enumerate(groups.items()):
            values = accuracies(rs)
            ax.scatter(i + np.linspace(-0.1, 0.1, len(values)), values, s=14, color=f"C{list(chosen).index(cell)}")
            ax.hlines(statistics.mean(values), i - 0.2, i + 0.2, color="k", lw=1.5)
        ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
        ax.set(ylabel="test accuracy", title=title)
        ax.grid(alpha=0.3, axis="y")

    columns(middle, {cell: (cell, rs) for cell, rs in at_best.items()}, "each at its chosen rate (bars: mean)")
    zoom = {"lstm": ("lstm", at_best["lstm"]), "gru": ("gru", at_best["gru"])}
    if "gru" in at_size:
        zoom["gru, LSTM's\nparameter count"] = ("gru", at_size["gru"])
    columns(right, zoom, "LSTM against GRU, zoomed")
    report.draw("cells", fig)
