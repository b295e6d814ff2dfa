"""Suite `cells`: LSTM, GRU and plain RNN at the recipe's settings."""

from __future__ import annotations

import statistics

from dist_rnn.plot import pyplot
from experiments.lab import LSTM, Lab, Report, accuracies, lstm_like_hidden, mean_spread, parameters, runs


def suite(lab: Lab, report: Report) -> None:
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
        return report.missing("cells")
    draw(report, configs, results)
    means = {key: statistics.mean(accuracies(rs)) for key, rs in results.items()}
    best_rnn = max((k for k in means if k[0] == "rnn"), key=means.get)
    failed = [k for k in means if k[0] == "rnn" and means[k] < 0.2]
    failed_runs = [r for key in failed for r in results[key]]
    report.section(
        "cells", failed=bool(failed), lstm=means[("lstm", 128, "0.01")],
        ranked=[{"cell": cell, "hidden": h, "lr": lr, "mean": mean_spread(accuracies(results[key])).split(" ± ")[0]}
                for key in sorted(means, key=means.get, reverse=True) for cell, h, lr in [key]],
        failed_sizes=", ".join(f"h={h}" for _, h, _ in failed),
        failed_final=" / ".join(f"{r['curve'][-1]['loss']:.2f}" for r in failed_runs),
        failed_min=f"{min(p['loss'] for r in failed_runs for p in r['curve']):.2f}" if failed_runs else "",
        best_rnn={"hidden": best_rnn[1], "lr": best_rnn[2], "accuracy": means[best_rnn]},
        best_gru=max(means[k] for k in means if k[0] == "gru"),
        cells_table=report.table(
            ["cell", "hidden", "Adam lr", "parameters", "test accuracy %",
             "training s, seed 0 (rough: a noisy machine)"],
            [[cell, h, lr, parameters(cell, h), mean_spread(accuracies(rs)),
              f"{rs[0]['results']['train_seconds']:.0f}"] for (cell, h, lr), rs in results.items()]))


def draw(report: Report, configs: list[tuple[str, int, str]], results: dict[tuple, list[dict]]) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 3.4))
    for cell, h, lr in configs:
        acc = accuracies(results[(cell, h, lr)])
        ax.errorbar([parameters(cell, h)], [statistics.mean(acc)], yerr=[[statistics.mean(acc) - min(acc)],
                    [max(acc) - statistics.mean(acc)]], fmt="o", capsize=3, label=f"{cell} h={h} lr {lr}")
    ax.set(xlabel="parameters", ylabel="test accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    report.draw("cells", fig)
