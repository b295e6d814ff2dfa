"""Suite `loss`: Cross-entropy against MSE on softmax outputs."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dist_rnn.plot import pyplot
from experiments.lab import (
    LSTM_CURVE,
    LSTM_RATES,
    Lab,
    Report,
    accuracies,
    accuracy_cell,
    accuracy_curve,
    at_rate,
    at_step,
    lstm_at,
    lstm_reference,
    mean_std,
    paired_text,
    pct,
    rate_name,
    runs,
    select,
    steps_text,
    sweep_table,
)


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


LOSSES = {"ce": "cross-entropy", "mse": "MSE on softmax", "mse-sum": "MSE on softmax, summed over classes"}


def curve_runs(lab: Lab, loss: str, lr: str) -> list[dict]:
    """The preset with `loss` at Adam rate `lr`, scored every 50 steps (seeds 0, 1, ...; per-image results kept)."""
    if loss == "ce":
        return lstm_reference(lab, "loss", lr)  # shared with the other suites
    return runs(lab, "loss", rate_name(f"lstm-{loss}-curve", lr), LSTM_CURVE + at_rate(lr) + ("--loss", loss),
                paired=True)


def suite(lab: Lab, report: Report) -> None:
    # Each loss gets its own rate, chosen on validation (cross-entropy's is the cells suite's LSTM sweep).
    chosen = {loss: select(lab, "loss", "lstm-128" if loss == "ce" else f"lstm-{loss}",
                           lambda lr, loss=loss: lstm_at(lr) + (() if loss == "ce" else ("--loss", loss)), LSTM_RATES)
              for loss in LOSSES}
    grads = lab.measure("loss", "loss-gradients", 0, loss_gradients)
    if not all(s.chosen for s in chosen.values()) or not grads:
        return report.missing("loss")
    lr = {loss: s.chosen for loss, s in chosen.items()}
    trained = {loss: curve_runs(lab, loss, rate) for loss, rate in lr.items()}
    # the plan's arms: each loss's final accuracy ('mse'), its accuracy at step 100 ('mse at step 100'), and
    # summed against averaged MSE in validation accuracy at each rate of the sweep ('mse val at 0.003')
    rates = {**lr, **{f"{loss} at step 100": rate for loss, rate in lr.items()}}
    controls = lab.plan.controls("loss", rates, lambda arm, rate: curve_runs(lab, arm.split(" at step")[0], rate))
    if not all(trained.values()) or not all(controls.values()):
        return report.missing("loss")
    ce, mse, mse_sum = trained["ce"], trained["mse"], trained["mse-sum"]
    rows = grads["values"]["rows"]
    draw(report, trained, rows, lr)
    early = {loss: [at_step(r, 100) for r in rs] for loss, rs in trained.items()}
    arms = {**{loss: accuracies(rs) for loss, rs in trained.items()},
            **{f"{loss} at step 100": v for loss, v in early.items()},
            **{arm: [at_step(r, 100) for r in rs] if " at step 100" in arm else accuracies(rs)
               for arm, rs in controls.items()},
            **{f"{loss} val at {rate}": chosen[loss].val(rate) for loss in ("mse", "mse-sum") for rate in LSTM_RATES}}
    cmp = lab.plan.family("loss", arms, rates)
    report.section(
        "loss", worst=rows[-1], first=rows[0], lr=lr, cmp=cmp, rates=LSTM_RATES, bound=lab.plan.bound,
        sum_tests=[cmp["sum_vs_mean"]] + [cmp[f"sum_vs_mean_val_{rate}"] for rate in LSTM_RATES],
        at_100={loss: pct(v) for loss, v in early.items()},
        steps={loss: steps_text(rs) for loss, rs in trained.items()},
        acc={loss: pct(accuracies(rs)) for loss, rs in trained.items()}, seeds=len(ce),
        sweep_seeds=len(lab.selection_seeds()),
        paired={"mse-ce": paired_text(cmp, "final", mse, ce), "sum-mean": paired_text(cmp, "sum_vs_mean", mse_sum, mse)},
        at_100_controls={arm: pct([at_step(r, 100) for r in rs]) for arm, rs in controls.items()},
        controls={arm: pct(accuracies(rs)) for arm, rs in controls.items()},
        sweep_table=sweep_table(report, "loss", {LOSSES[loss]: s for loss, s in chosen.items()}),
        gradients_table=report.table(
            ["margin", "p(true class)", "|dL/dz| cross-entropy", "|dL/dz| MSE on softmax"],
            [[r["margin"], f"{r['p_true']:.2e}", f"{r['ce_grad_norm']:.3f}", f"{r['mse_grad_norm']:.2e}"]
             for r in rows]),
        training_table=report.table(
            ["loss", "Adam lr (chosen on validation)", "test accuracy % after 2 epochs", "steps to 90 %",
             "test accuracy % at step 100"],
            [[LOSSES[loss], chosen[loss].chosen, accuracy_cell(rs), steps_text(rs), mean_std(early[loss])]
             for loss, rs in trained.items()]))


def draw(report: Report, trained: dict[str, list[dict]], rows: list[dict], lr: dict[str, str]) -> None:
    """Left: training curves, every seed. Then, on axes that show their gaps: the accuracies at step 100
    (where the text argues from a gap of a few points) and the final ones, per seed. Right: the
    gradient on the logits against the margin of a wrong class."""
    fig, (left, early, middle, right) = pyplot().subplots(1, 4, figsize=(15, 3.6), width_ratios=(3, 1.8, 1.8, 3))
    for i, (loss, records) in enumerate(trained.items()):
        for r in records:
            left.plot(*accuracy_curve(r), color=f"C{i}", alpha=0.8, lw=1,
                      label=f"{LOSSES[loss]} (Adam {lr[loss]})" if r is records[0] else None)
        for ax, values in ((early, [at_step(r, 100) for r in records]), (middle, accuracies(records))):
            ax.scatter(i + np.linspace(-0.1, 0.1, len(values)), values, s=14, color=f"C{i}")
            ax.hlines(statistics.mean(values), i - 0.2, i + 0.2, color="k", lw=1.5)
    left.axvline(100, color="gray", lw=0.6, ls=":")
    left.set(xlabel="optimizer step", ylabel="test accuracy", ylim=(0, 1), title="training (all seeds)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for ax, title in ((early, "at step 100 (zoomed)"), (middle, "after 2 epochs (zoomed)")):
        ax.set_xticks(range(len(trained)), ["cross-\nentropy", "MSE", "MSE,\nsummed"], fontsize=8)
        ax.set(ylabel="test accuracy", title=f"{title}; bars: mean")
        ax.grid(alpha=0.3, axis="y")
    right.semilogy([r["margin"] for r in rows], [r["ce_grad_norm"] for r in rows], marker="o", label="cross-entropy")
    right.semilogy([r["margin"] for r in rows], [r["mse_grad_norm"] for r in rows], marker="o", label="MSE on softmax")
    right.set(xlabel="margin of the wrong class (logits)", ylabel="|dL/dlogits|",
              title="gradient when confidently wrong")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    report.draw("loss", fig)
