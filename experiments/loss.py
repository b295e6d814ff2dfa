"""Suite `loss`: Cross-entropy against MSE on softmax outputs."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dist_rnn.plot import pyplot
from experiments.lab import (LSTM_CURVE, Lab, Report, accuracies, accuracy_cell, accuracy_curve, at_step, compare, holm,
                             lstm_runs, mean_std, pct, runs, steps_text)


def loss_gradients(seed: int) -> dict[str, Any]:
    """|dL/dlogits| for cross-entropy and for MSE on softmax outputs, as a prediction gets confidently wrong."""
    rows = []
    for margin in [0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0]:
        logits = torch.zeros(1, 10)
        logits[0, 3] = margin  # class 3 predicted with this margin; the true class is 0
        target = torch.tensor([0])
        grads = {}
        for loss in ("ce", "mse"):
            z = logits.clone().requires_grad_(True)
            value = F.cross_entropy(z, target) if loss == "ce" else \
                F.mse_loss(torch.softmax(z, 1), F.one_hot(target, 10).float())
            value.backward()
            grads[loss] = float(z.grad.norm())
        rows.append({"margin": margin, "p_true": float(torch.softmax(logits, 1)[0, 0]),
                     "ce_grad_norm": grads["ce"], "mse_grad_norm": grads["mse"]})
    return {"rows": rows}


def suite(lab: Lab, report: Report) -> None:
    ce = lstm_runs(lab, "loss")
    mse = runs(lab, "loss", "lstm-mse-curve", LSTM_CURVE + ("--loss", "mse"))
    grads = lab.measure("loss", "loss-gradients", 0, loss_gradients)
    if not (ce and mse and grads):
        return report.missing("loss")
    rows = grads["values"]["rows"]
    draw(report, ce, mse, rows)
    report.section(
        "loss", worst=rows[-1], first=rows[0], mse_at_100=pct([at_step(r, 100) for r in mse]),
        ce_at_100=pct([at_step(r, 100) for r in ce]), mse_steps=steps_text(mse), ce_steps=steps_text(ce),
        mse=pct(accuracies(mse)), ce=pct(accuracies(ce)), seeds=len(ce),
        **holm(dict(final=compare(accuracies(mse), accuracies(ce)),
                    early=compare([at_step(r, 100) for r in mse], [at_step(r, 100) for r in ce]))),
        gradients_table=report.table(
            ["margin", "p(true class)", "|dL/dz| cross-entropy", "|dL/dz| MSE on softmax"],
            [[r["margin"], f"{r['p_true']:.2e}", f"{r['ce_grad_norm']:.3f}", f"{r['mse_grad_norm']:.2e}"]
             for r in rows]),
        training_table=report.table(
            ["loss", "test accuracy % after 2 epochs", "steps to 90 %", "test accuracy % at step 100"],
            [[name, accuracy_cell(records), steps_text(records),
              mean_std([at_step(r, 100) for r in records])]
             for name, records in (("cross-entropy", ce), ("MSE on softmax", mse))]))


def draw(report: Report, ce: list[dict], mse: list[dict], rows: list[dict]) -> None:
    """Left: training curves, every seed. Middle: the final accuracies per seed, on an axis that
    shows their gap. Right: the gradient on the logits against the margin of a wrong class."""
    fig, (left, middle, right) = pyplot().subplots(1, 3, figsize=(12, 3.6), width_ratios=(3, 1.4, 3))
    for records, name, color in ((ce, "cross-entropy", "C0"), (mse, "MSE on softmax", "C1")):
        for r in records:
            left.plot(*accuracy_curve(r), color=color, alpha=0.8, label=name if r["seed"] == 0 else None)
    left.set(xlabel="optimizer step", ylabel="test accuracy", ylim=(0, 1), title="training (all seeds)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for i, (records, color) in enumerate(((ce, "C0"), (mse, "C1"))):
        values = accuracies(records)
        middle.scatter(i + np.linspace(-0.1, 0.1, len(values)), values, s=14, color=color)
        middle.hlines(statistics.mean(values), i - 0.2, i + 0.2, color="k", lw=1.5)
    middle.set_xticks([0, 1], ["cross-\nentropy", "MSE"], fontsize=8)
    middle.set(ylabel="test accuracy after 2 epochs", title="final (bars: mean)")
    middle.grid(alpha=0.3, axis="y")
    right.semilogy([r["margin"] for r in rows], [r["ce_grad_norm"] for r in rows], marker="o", label="cross-entropy")
    right.semilogy([r["margin"] for r in rows], [r["mse_grad_norm"] for r in rows], marker="o", label="MSE on softmax")
    right.set(xlabel="margin of the wrong class (logits)", ylabel="|dL/dlogits|",
              title="gradient when confidently wrong")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    report.draw("loss", fig)
