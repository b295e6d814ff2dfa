"""Suite `bidirectional`: How a bidirectional RNN is read out, and what its two halves have seen."""

from __future__ import annotations

import functools
import statistics
from typing import Any

import numpy as np
import torch
from torch import nn

from dist_rnn.config import TrainConfig
from dist_rnn.data import SequenceView
from dist_rnn.plot import pyplot
from experiments.cells import step_times
from experiments.lab import (BILSTM, Lab, PROBE_SAMPLES, Report, accuracies, accuracy_cell, compare, fit_linear, holm,
                             lstm_at, lstm_runs, mean_std, measures, parameters, pct, runs)


def half_probes(lab: "Lab", config: TrainConfig, model: nn.Module, view: SequenceView, x_train: torch.Tensor,
                x_test: torch.Tensor) -> dict[str, Any]:
    """Accuracy of a linear probe on each direction's half of a bidirectional readout."""
    train, test = lab.data
    h = config.hidden_size
    y_train, y_test = train.labels[:len(x_train)], test.labels
    return {"probe_forward_half": fit_linear(x_train[:, :h], y_train, x_test[:, :h], y_test),
            "probe_backward_half": fit_linear(x_train[:, h:], y_train, x_test[:, h:], y_test),
            "probe_both": fit_linear(x_train, y_train, x_test, y_test)}


half_probes.provides = ("probe_forward_half", "probe_backward_half", "probe_both")  # type: ignore[attr-defined]


def suite(lab: Lab, report: Report) -> None:
    probes = functools.partial(half_probes, lab)
    one_layer = ("--num-layers", "1")
    found = {"LSTM (`seed-lstm`)": lstm_runs(lab, "bidirectional"),
             "BiLSTM, `out[:, -1, :]` (`seed-bilstm`)": runs(lab, "bidirectional", "bilstm-last", BILSTM, probes),
             "BiLSTM, `--readout final`": runs(lab, "bidirectional", "bilstm-final", BILSTM + ("--readout", "final"),
                                               probes),
             "1-layer BiLSTM, `out[:, -1, :]`": runs(lab, "bidirectional", "bilstm1-last", BILSTM + one_layer, probes),
             "1-layer BiLSTM, `--readout final`": runs(lab, "bidirectional", "bilstm1-final",
                                                       BILSTM + one_layer + ("--readout", "final"), probes)}
    # The presets differ in learning rate (LSTM 0.01, BiLSTM 0.003): each also at the other's rate.
    rates = {"LSTM at Adam 0.003": runs(lab, "bidirectional", "lstm-128-lr0.003", lstm_at("0.003")),
             "BiLSTM `out[:, -1, :]` at Adam 0.01": runs(lab, "bidirectional", "bilstm-last-lr0.01",
                                                         BILSTM + ("--lr", "0.01"), probes)}
    times = measures(lab, "bidirectional", "step-times", step_times)  # the cells suite's records
    if not all(found.values()) or not all(rates.values()) or not times:
        return report.missing("bidirectional")
    uni, last, final, last1, final1 = found.values()
    rows = []
    for name, records in {**found, **rates}.items():
        bi = "BiLSTM" in name
        probe = lambda half: mean_std([r["analysis"][f"probe_{half}_half"] for r in records]) if bi else "-"  # noqa
        rows.append([name, parameters("lstm", 128, 1 if name.startswith("1-layer") else 2, bidirectional=bi),
                     len(records), accuracy_cell(records), probe("forward"), probe("backward")])
    draw(report, found, rates)
    draw_readouts(report)
    lstm3, bilstm01 = rates.values()
    report.section(
        "bidirectional", probe_samples=PROBE_SAMPLES,
        back={key: statistics.mean(r["analysis"]["probe_backward_half"] for r in records)
              for key, records in (("last", last), ("final", final), ("last1", last1), ("final1", final1))},
        fwd1=statistics.mean(r["analysis"]["probe_forward_half"] for r in last1),
        uni=pct(accuracies(uni)), last=pct(accuracies(last)), final=pct(accuracies(final)),
        last1=pct(accuracies(last1)), final1=pct(accuracies(final1)),
        lstm3=pct(accuracies(lstm3)), bilstm01=pct(accuracies(bilstm01)),
        **holm(dict(readout1=compare(accuracies(final1), accuracies(last1)),
                    readout2=compare(accuracies(final), accuracies(last)),
                    at003=compare(accuracies(last), accuracies(lstm3)),
                    at001=compare(accuracies(bilstm01), accuracies(uni)),
                    presets=compare(accuracies(last), accuracies(uni)))),
        param_ratio=parameters("lstm", 128, bidirectional=True) / parameters("lstm", 128),
        time_ratio=statistics.median(t["ms_per_step"]["bilstm"] / t["ms_per_step"]["lstm"] for t in times),
        models_table=report.table(["model", "parameters", "seeds", "test accuracy %", "probe on forward half %",
                                   "probe on backward half %"], rows))


def draw(report: Report, found: dict[str, list[dict]], rates: dict[str, list[dict]]) -> None:
    """Each model's test accuracy and the two half-probes, one dot per seed, on an axis that shows
    the gaps; with the equal-rate controls (the LSTM at 0.003, the BiLSTM at 0.01) the text's
    comparison rests on."""
    fig, (top, bottom) = pyplot().subplots(2, 1, figsize=(10, 5.2), sharex=True, height_ratios=(1, 1))
    labels = ["LSTM\n(0.01)", "BiLSTM\nout[:, -1]\n(0.003)", "BiLSTM\nfinal", "1-layer BiLSTM\nout[:, -1]",
              "1-layer BiLSTM\nfinal", "LSTM\nat 0.003", "BiLSTM\nout[:, -1]\nat 0.01"]
    for i, records in enumerate([*found.values(), *rates.values()]):
        dots = [r["results"]["test_accuracy"] for r in records]
        top.scatter(i + np.linspace(-0.08, 0.08, len(dots)), dots, s=14, color="C0",
                    label="model test accuracy (one dot per seed)" if i == 0 else None)
        top.hlines(statistics.mean(dots), i - 0.15, i + 0.15, color="C0", lw=2)
        if "probe_forward_half" not in records[0].get("analysis", {}):  # the LSTMs: no halves to probe
            continue
        for half, dx, color in (("forward", -0.15, "C1"), ("backward", 0.15, "C3")):
            values = [r["analysis"][f"probe_{half}_half"] for r in records]
            bottom.scatter(i + dx + np.linspace(-0.05, 0.05, len(values)), values, s=14, color=color,
                           label=f"probe on the {half} half" if i == 1 else None)
    top.set(ylabel="test accuracy\n(bars: mean)")
    bottom.set(ylabel="probe test accuracy", ylim=(0, 1))
    bottom.set_xticks(range(len(labels)), labels, fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    report.draw("bidirectional", fig)


def draw_readouts(report: Report, rows: int = 28) -> None:
    """What each half of each readout has read, row by row, in a 1- and a 2-layer BiLSTM: directly (dark)
    or only through the layer below (light)."""
    readouts = [  # (label, rows read directly, rows read through the layer below)
        ("1 layer, out[:, -1, :H]  (forward)", range(rows), []),
        ("1 layer, out[:, -1, H:]  (backward)", [rows - 1], []),
        ("1 layer, h_n backward  (= out[:, 0, H:])", range(rows), []),
        ("2 layers, out[:, -1, :H]  (forward)", range(rows), []),
        ("2 layers, out[:, -1, H:]  (backward)", [rows - 1], range(rows - 1)),
        ("2 layers, h_n backward  (= out[:, 0, H:])", range(rows), []),
    ]
    fig, ax = pyplot().subplots(figsize=(8, 3.2))
    for y, (label, direct, below) in enumerate(readouts):
        ax.barh([y] * len(below), 1, left=list(below), color="C0", alpha=0.25, edgecolor="none")
        ax.barh([y] * len(direct), 1, left=list(direct), color="C0", edgecolor="none")
    from matplotlib.patches import Patch  # (matplotlib is imported only when the report is drawn)
    ax.legend(handles=[Patch(color="C0", label="read by this state's own recurrence"),
                       Patch(color="C0", alpha=0.25, label="reached only through the lower layer's forward half")],
              fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
    ax.set_yticks(range(len(readouts)), [r[0] for r in readouts], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="image row (the sequence's step)", xlim=(0, rows))
    report.draw("bidirectional-readouts", fig)
