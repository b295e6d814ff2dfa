"""Suite `views`: Rows, columns, pixels and permuted pixels as sequences."""

from __future__ import annotations

import statistics

import numpy as np

from dist_rnn.plot import pyplot
from experiments.lab import Lab, Report, accuracies, accuracy_curve, mean_std, runs

# The pixel views are 784 steps long (28x the rows): on 2 CPU cores the presets would take hours,
# so the views suite compares all four views at one small budget.
VIEW_BUDGET = ("--hidden-size", "64", "--num-layers", "1", "--batch-size", "100", "--lr", "0.005", "--grad-clip", "1",
               "--epochs", "1", "--limit-train", "20000", "--eval-every", "50")


def suite(lab: Lab, report: Report) -> None:
    views = ["row", "column", "pixel", "permuted"]
    results = {v: runs(lab, "views", f"view-{v}", VIEW_BUDGET + ("--sequence", v)) for v in views}
    if not all(results.values()):
        return report.missing("views")
    draw(report, results)
    report.section(
        "views", budget=" ".join(VIEW_BUDGET), acc={v: statistics.mean(accuracies(results[v])) for v in views},
        pixel_rate=statistics.mean(r["results"]["train_samples_per_s"] for r in results["pixel"]),
        classes={v: max(int((np.array(r["analysis"]["confusion"]).sum(0) > 0).sum()) for r in results[v])
                 for v in views},
        stuck=all(statistics.mean(accuracies(results[v])) < 0.2 for v in ("pixel", "permuted")),
        views_table=report.table(["view", "steps per image", "test accuracy %", "training s (seed 0)"], [
            [v, 28 if v in ("row", "column") else 784, mean_std(accuracies(rs)),
             f"{rs[0]['results']['train_seconds']:.0f}"] for v, rs in results.items()]))


def draw(report: Report, results: dict[str, list[dict]]) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 3.4))
    for v, records in results.items():
        ax.plot(*accuracy_curve(records[0]), marker=".", label=v)
    ax.set(xlabel="optimizer step", ylabel="test accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    report.draw("views", fig)
