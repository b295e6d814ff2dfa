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
from experiments.lab import (
    BILSTM,
    BILSTM_LR,
    LSTM_RATES,
    PROBE_SAMPLES,
    VAL_SIZE,
    Lab,
    Report,
    accuracies,
    accuracy_cell,
    at_rate,
    fit_linear,
    lstm_at,
    lstm_reference,
    mean_std,
    measures,
    paired_text,
    parameters,
    pct,
    rate_name,
    runs,
    select,
    sweep_table,
)


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


# The arms compared with the LSTM: record name and arguments on top of the `seed-bilstm` preset.
ARMS = {"BiLSTM, `out[:, -1, :]`": ("bilstm-last", ()),
        "BiLSTM, `--readout final`": ("bilstm-final", ("--readout", "final")),
        "1-layer BiLSTM, `out[:, -1, :]`": ("bilstm1-last", ("--num-layers", "1")),
        "1-layer BiLSTM, `--readout final`": ("bilstm1-final", ("--num-layers", "1", "--readout", "final"))}
ARM_NAMES = ("lstm", "last", "final", "1-layer last", "1-layer final")  # the plan's names: the LSTM, then ARMS


def bilstm_at(lr: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The `seed-bilstm` preset with `extra` arguments at Adam rate `lr` (no `--lr` at its own 0.003)."""
    return BILSTM + extra + at_rate(lr, own=BILSTM_LR)


def bilstm_runs(lab: Lab, name: str, extra: tuple[str, ...], lr: str) -> list[dict]:
    """A BiLSTM arm at its chosen rate on the whole training set, with per-image results and half-probes
    (the record's name and arguments spell the rate alike: none at the preset's own)."""
    return runs(lab, "bidirectional", rate_name(name, lr, own=BILSTM_LR), bilstm_at(lr, extra),
                functools.partial(half_probes, lab), paired=True)


def suite(lab: Lab, report: Report) -> None:
    # Every arm at its own rate, chosen on validation; the LSTM's sweep is the cells suite's.
    chosen = {"LSTM": select(lab, "bidirectional", "lstm-128", lstm_at, LSTM_RATES)}
    chosen.update({label: select(lab, "bidirectional", name, functools.partial(bilstm_at, extra=extra), LSTM_RATES)
                   for label, (name, extra) in ARMS.items()})
    times = measures(lab, "bidirectional", "step-times", step_times)  # the cells suite's records
    if not all(s.chosen for s in chosen.values()) or not times:
        return report.missing("bidirectional")
    lr = {label: s.chosen for label, s in chosen.items()}
    arm_of = dict(zip(chosen, ARM_NAMES))  # label -> the plan's arm name

    def at(label: str, rate: str) -> list[dict]:
        """A model on the whole training set at Adam rate `rate` (seeds 0, 1, ...)."""
        if label == "LSTM":
            return lstm_reference(lab, "bidirectional", rate)
        name, extra = ARMS[label]
        return bilstm_runs(lab, name, extra, rate)

    found = {label: at(label, rate) for label, rate in lr.items()}
    rates = {arm_of[label]: rate for label, rate in lr.items()}
    label_of = {arm: label for label, arm in arm_of.items()}
    # the plan's shared-rate controls: each model again at the chosen rate of the one it is compared with
    controls = lab.plan.controls("bidirectional", rates, lambda arm, rate: at(label_of[arm], rate))
    if not all(found.values()) or not all(controls.values()):
        return report.missing("bidirectional")
    uni, last, final, last1, final1 = found.values()
    pairs = {"readout1": (final1, last1), "readout2": (final, last), "last_vs_uni": (last, uni),
             "final_vs_uni": (final, uni)}
    cmp = lab.plan.family("bidirectional", {**{arm_of[label]: accuracies(rs) for label, rs in found.items()},
                                            **{arm: accuracies(rs) for arm, rs in controls.items()}}, rates)
    rows = []
    for label, records in found.items():
        bi = label != "LSTM"
        probe = lambda half: mean_std([r["analysis"][f"probe_{half}_half"] for r in records]) if bi else "-"  # noqa
        rows.append([label, parameters("lstm", 128, 1 if label.startswith("1-layer") else 2, bidirectional=bi),
                     lr[label], len(records), accuracy_cell(records), probe("forward"), probe("backward")])
    draw(report, found, lr)
    draw_readouts(report)
    report.section(
        "bidirectional", probe_samples=PROBE_SAMPLES,
        rate=dict(zip(("uni", "last", "final", "last1", "final1"), lr.values())),
        selection_seeds=lab.selection_span(), val_size=int(VAL_SIZE),
        back={key: statistics.mean(r["analysis"]["probe_backward_half"] for r in records)
              for key, records in (("last", last), ("final", final), ("last1", last1), ("final1", final1))},
        fwd1=statistics.mean(r["analysis"]["probe_forward_half"] for r in last1),
        uni=pct(accuracies(uni)), last=pct(accuracies(last)), final=pct(accuracies(final)),
        last1=pct(accuracies(last1)), final1=pct(accuracies(final1)),
        cmp=cmp, controls={arm: pct(accuracies(rs)) for arm, rs in controls.items()},
        paired={key: paired_text(cmp, key, a, b) for key, (a, b) in pairs.items()},
        param_ratio=parameters("lstm", 128, bidirectional=True) / parameters("lstm", 128),
        time_ratio=statistics.median(t["ms_per_step"]["bilstm"] / t["ms_per_step"]["lstm"] for t in times),
        sweep_table=sweep_table(report, "model", chosen),
        models_table=report.table(["model", "parameters", "Adam lr (chosen on validation)", "seeds",
                                   "test accuracy %", "probe on forward half %", "probe on backward half %"], rows))


def draw(report: Report, found: dict[str, list[dict]], lr: dict[str, str]) -> None:
    """Each model's test accuracy at its chosen rate and the two half-probes, one dot per seed, on an
    axis that shows the gaps."""
    fig, (top, bottom) = pyplot().subplots(2, 1, figsize=(9, 5.2), sharex=True, height_ratios=(1, 1))
    labels = [label.replace("`", "").replace("BiLSTM, ", "BiLSTM\n") + f"\n(Adam {lr[label]})"
              for label in found]
    for i, records in enumerate(found.values()):
        dots = [r["results"]["test_accuracy"] for r in records]
        top.scatter(i + np.linspace(-0.08, 0.08, len(dots)), dots, s=14, color="C0",
                    label="model test accuracy (one dot per seed)" if i == 0 else None)
        top.hlines(statistics.mean(dots), i - 0.15, i + 0.15, color="C0", lw=2)
        if "probe_forward_half" not in records[0].get("analysis", {}):  # the LSTM: no halves to probe
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
