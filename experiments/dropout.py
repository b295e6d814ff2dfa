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
from experiments.lab import LSTM, PROBE_SAMPLES, Lab, Report, accuracies, mean_spread, missing, pct, runs


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
