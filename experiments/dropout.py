"""Suite `dropout`: How dropout acts inside an RNN, and whether it helps."""

from __future__ import annotations

import statistics
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn.plot import pyplot
from experiments.lab import LSTM, PROBE_SAMPLES, Lab, Report, accuracies, mean_spread, pct, runs


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


def suite(lab: Lab, report: Report) -> None:
    check = [m["values"] for m in (lab.measure("dropout", "dropout-check", s, dropout_check) for s in lab.seeds()) if m]
    variants = [("none", LSTM), ("nn.LSTM dropout 0.2", LSTM + ("--dropout", "0.2")),
                ("nn.LSTM dropout 0.5", LSTM + ("--dropout", "0.5")),
                ("dropout 0.5 before the classifier", LSTM + ("--head-dropout", "0.5"))]
    results = {name: runs(lab, "dropout", f"lstm-dropout-{i}", args) for i, (name, args) in enumerate(variants)}
    if not check or not all(results.values()):
        return report.missing("dropout")
    rows = []
    for name, records in results.items():
        train_acc = [r["analysis"]["train_accuracy"] for r in records]
        rows.append([name, mean_spread(accuracies(records)), mean_spread(train_acc),
                     mean_spread([t - a for t, a in zip(train_acc, accuracies(records))])])
    draw(report, results)
    means = {n: statistics.mean(accuracies(rs)) for n, rs in results.items()}
    best, worst = max(means, key=means.get), min(means, key=means.get)
    low = min(results[worst], key=lambda r: r["results"]["test_accuracy"])
    first, last = low["evals"][0]["test_accuracy"], low["results"]["test_accuracy"]
    report.section(
        "dropout", seed=lab.seeds()[0], c=check[0], probe_samples=PROBE_SAMPLES,
        gap_none=statistics.mean(r["analysis"]["train_accuracy"] - r["results"]["test_accuracy"]
                                 for r in results["none"]),
        best=best, best_pct=pct(accuracies(results[best])), none_pct=pct(accuracies(results["none"])),
        worst=worst, worst_pct=pct(accuracies(results[worst])),
        unstable={"first": first, "last": last} if last < first else None,
        variants_table=report.table(["dropout", "test accuracy %", "train accuracy %", "train - test gap, points"],
                                    rows))


def draw(report: Report, results: dict[str, list[dict]]) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 3.4))
    names = list(results)
    for offset, (label, key) in enumerate((("train", "train"), ("test", "test"))):
        values = [statistics.mean(r["analysis"][f"{key}_accuracy"] for r in results[n]) for n in names]
        ax.bar(np.arange(len(names)) + offset * 0.4 - 0.2, values, width=0.4, label=label)
    ax.set_xticks(range(len(names)), [n.replace(" before", "\nbefore") for n in names], fontsize=8)
    ax.set(ylabel="accuracy", ylim=(0.9, 1.0))
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    report.draw("dropout", fig)
