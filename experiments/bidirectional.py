"""Suite `bidirectional`: How a bidirectional RNN is read out, and what its two halves have seen."""

from __future__ import annotations

import functools
import statistics
from typing import Any

import torch
from torch import nn

from dist_rnn.config import TrainConfig
from dist_rnn.data import SequenceView
from dist_rnn.plot import pyplot
from experiments.lab import (BILSTM, LSTM, PROBE_SAMPLES, Lab, Report, accuracies, fit_linear, mean_spread,
                             parameters, pct, runs)


def half_probes(lab: "Lab", config: TrainConfig, model: nn.Module, view: SequenceView, x_train: torch.Tensor,
                x_test: torch.Tensor) -> dict[str, Any]:
    """Accuracy of a linear probe on each direction's half of a bidirectional readout."""
    train, test = lab.data
    h = config.hidden_size
    y_train, y_test = train.labels[:len(x_train)], test.labels
    return {"probe_forward_half": fit_linear(x_train[:, :h], y_train, x_test[:, :h], y_test),
            "probe_backward_half": fit_linear(x_train[:, h:], y_train, x_test[:, h:], y_test),
            "probe_both": fit_linear(x_train, y_train, x_test, y_test)}


def suite(lab: Lab, report: Report) -> None:
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
        return report.missing("bidirectional")
    uni, last, final, last1, final1 = found.values()
    rows = []
    for name, records in found.items():
        bi = "BiLSTM" in name
        probe = lambda half: mean_spread([r["analysis"][f"probe_{half}_half"] for r in records]) if bi else "-"  # noqa
        rows.append([name, parameters("lstm", 128, 1 if name.startswith("1-layer") else 2, bidirectional=bi),
                     mean_spread(accuracies(records)), probe("forward"), probe("backward")])
    draw(report, found)
    report.section(
        "bidirectional", probe_samples=PROBE_SAMPLES,
        back={key: statistics.mean(r["analysis"]["probe_backward_half"] for r in records)
              for key, records in (("last", last), ("final", final), ("last1", last1), ("final1", final1))},
        fwd1=statistics.mean(r["analysis"]["probe_forward_half"] for r in last1),
        moved=abs(statistics.mean(accuracies(last1)) - statistics.mean(accuracies(final1))) * 100,
        uni=pct(accuracies(uni)), last=pct(accuracies(last)), final=pct(accuracies(final)),
        last1=pct(accuracies(last1)), final1=pct(accuracies(final1)),
        models_table=report.table(["model", "parameters", "test accuracy %", "probe on forward half %",
                                   "probe on backward half %"], rows))


def draw(report: Report, found: dict[str, list[dict]]) -> None:
    fig, ax = pyplot().subplots(figsize=(8, 3.6))
    labels = ["LSTM", "BiLSTM\nlast", "BiLSTM\nfinal", "1-layer\nlast", "1-layer\nfinal"]
    ax.bar(labels, [statistics.mean(accuracies(r)) for r in found.values()], color="C0", label="model")
    for i, records in enumerate(list(found.values())[1:], start=1):
        for half, dx, color in (("forward", -0.15, "C1"), ("backward", 0.15, "C3")):
            ax.scatter([i + dx], [statistics.mean(r["analysis"][f"probe_{half}_half"] for r in records)],
                       color=color, zorder=3, label=f"probe: {half} half" if i == 1 else None)
    ax.set(ylabel="test accuracy", ylim=(0, 1))
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    report.draw("bidirectional", fig)
