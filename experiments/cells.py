"""Suite `cells`: LSTM, GRU and plain RNN at the recipe's settings."""

from __future__ import annotations

import statistics

from dist_rnn.plot import pyplot
from experiments.lab import (LSTM, Lab, Report, accuracies, lstm_like_hidden, mean_spread, missing, parameters,
                             runs)


def suite(lab: Lab, report: Report) -> None:
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
