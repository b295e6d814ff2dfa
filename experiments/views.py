"""Suite `views`: Rows, columns, pixels and permuted pixels as sequences, and the published pixel-MNIST figures."""

from __future__ import annotations

import statistics

import numpy as np

from dist_rnn.plot import pyplot
from experiments.lab import (Lab, Report, accuracies, accuracy_cell, accuracy_curve, collapsed, compare, holm, runs)

# The pixel views are 784 steps long (28x the rows): on 2 CPU cores the presets would take hours,
# so the views suite compares all four views at one small budget.
VIEW_BUDGET = ("--hidden-size", "64", "--num-layers", "1", "--batch-size", "100", "--lr", "0.005", "--grad-clip", "1",
               "--epochs", "1", "--limit-train", "20000", "--eval-every", "50")
BUDGET_STEPS = 200  # 20,000 images in batches of 100

# Published test accuracies (%) on pixel / permuted MNIST, each with what was checked and against what.
LITERATURE = [
    {"paper": "Le, Jaitly & Hinton 2015, arXiv:1504.00941", "lstm": "65 / 36 (unconfirmed)",
     "other": "IRNN 97 / 82", "budget": "not read",
     "checked": "the LSTM figures were not found in any source reached; IRNN as cited in Cooijmans et al. Table 1 "
                "(Li et al. cite 95 / 82)"},
    {"paper": "Arjovsky, Shah & Bengio 2016 (ICML), arXiv:1511.06464", "lstm": "98.2 / 88.0 or 97.3 / 92.6 (cited)",
     "other": "uRNN 95.1 / 91.4", "budget": "LSTM of 128 units",
     "checked": "not read; uRNN as cited alike by Cooijmans et al. and Li et al.; the LSTM is cited as 98.2 / 88.0 "
                "by Li et al. and 97.3 / 92.6 by AntisymmetricRNN (Chang et al. 2019)"},
    {"paper": "Wisdom et al. 2016 (NIPS), arXiv:1611.00035", "lstm": "97.8 / 91.3 (cited)",
     "other": "full-capacity uRNN (512 units) 96.9 / 94.1 (cited)",
     "budget": "batch 50, up to 200 epochs with early stopping (authors' code)",
     "checked": "not read; figures as cited by later papers, budget from the authors' repository stwisdom/urnn"},
    {"paper": "Cooijmans et al. 2017 (ICLR), arXiv:1603.09025", "lstm": "98.9 / 90.2", "other": "BN-LSTM 99.0 / 95.4",
     "budget": "100 units, RMSProp 1e-3, clip 1, early stopping",
     "checked": "the paper's Table 1 and section 5.1"},
    {"paper": "Li et al. 2018 (CVPR), arXiv:1803.04831", "lstm": "98.2 / 88.0 (quoted from Arjovsky et al.)",
     "other": "IndRNN (6 layers) 99.0 / 96.0", "budget": "6 x 128 units, Adam 2e-4 divided by 10 every 600,000 steps",
     "checked": "the paper's Table 1 (error rates: 1.0 / 4.0)"},
]


def suite(lab: Lab, report: Report) -> None:
    views = ["row", "column", "pixel", "permuted"]
    results = {v: runs(lab, "views", f"view-{v}", VIEW_BUDGET + ("--sequence", v)) for v in views}
    if not all(results.values()):
        return report.missing("views")
    draw(report, results)
    rate = {v: statistics.median(r["results"]["train_samples_per_s"] for r in rs) for v, rs in results.items()}
    report.section(
        "views", budget=" ".join(VIEW_BUDGET), steps=BUDGET_STEPS, seeds=len(results["row"]),
        acc={v: statistics.mean(accuracies(results[v])) for v in views},
        collapsed={v: sum(collapsed(r) for r in results[v]) for v in views},
        best_seed={v: max(accuracies(results[v])) for v in views},
        **holm(dict(permuted_vs_pixel=compare(accuracies(results["permuted"]), accuracies(results["pixel"])),
                    column_vs_row=compare(accuracies(results["column"]), accuracies(results["row"])))),
        pixel_rate=rate["pixel"], concurrent=max(r.get("concurrent_runs", 1) for r in results["pixel"]),
        gpu=results["pixel"][0]["machine"]["gpu"],
        views_table=report.table(
            ["view", "steps per image", "seeds", "test accuracy %", "best seed %", "training samples/s (median)"],
            [[v, 28 if v in ("row", "column") else 784, len(rs), accuracy_cell(rs), f"{max(accuracies(rs)) * 100:.2f}",
              f"{rate[v]:.0f}"] for v, rs in results.items()]),
        literature_table=report.table(
            ["paper", "LSTM pixel / permuted %", "other model, pixel / permuted %", "their budget", "checked against"],
            [[p["paper"], p["lstm"], p["other"], p["budget"], p["checked"]] for p in LITERATURE] +
            [["this report (1-layer LSTM, 64 units)",
              f"{statistics.mean(accuracies(results['pixel'])) * 100:.1f} / "
              f"{statistics.mean(accuracies(results['permuted'])) * 100:.1f}", "-",
              f"{BUDGET_STEPS} steps of batch 100 (a third of an epoch)", "the records below"]]))


def draw(report: Report, results: dict[str, list[dict]]) -> None:
    """Every seed's test accuracy during training: the 28-step views (row, column) and the 784-step
    views (pixel, permuted) in panels of their own, so that no view's lines hide another's."""
    fig, panels = pyplot().subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, names, title in ((panels[0], ("row", "column"), "28 steps per image"),
                             (panels[1], ("pixel", "permuted"), "784 steps per image")):
        for v in names:
            i = list(results).index(v)
            for r in results[v]:
                ax.plot(*accuracy_curve(r), color=f"C{i}", alpha=0.7, lw=1,
                        ls="-" if v in ("row", "pixel") else "--", label=v if r is results[v][0] else None)
        ax.axhline(0.1, color="gray", lw=0.8, ls=":")
        ax.text(5, 0.11, "chance", fontsize=8, color="gray")
        ax.set(xlabel="optimizer step", ylim=(0, 1), xticks=np.arange(0, 201, 50), title=title)
        ax.legend(fontsize=8, title="one line per seed", title_fontsize=8)
        ax.grid(alpha=0.3)
    panels[0].set(ylabel="test accuracy")
    report.draw("views", fig)
