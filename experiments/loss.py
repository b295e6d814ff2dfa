"""Suite `loss`: Cross-entropy against MSE on softmax outputs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dist_rnn.plot import pyplot
from experiments.lab import (LSTM, Lab, Report, accuracies, accuracy_curve, at_step, mean_spread, missing, pct,
                             runs, steps_text)


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
    report.add("## Cross-entropy or mean squared error?")
    ce = runs(lab, "loss", "lstm-curve", LSTM + ("--eval-every", "50"))
    mse = runs(lab, "loss", "lstm-mse-curve", LSTM + ("--eval-every", "50", "--loss", "mse"))
    grads = lab.measure("loss", "loss-gradients", 0, loss_gradients)
    if not (ce and mse and grads):
        return missing(report, "loss")
    rows = grads["values"]["rows"]
    report.add("Gradient of each loss with respect to the logits for one sample whose true class is 0 while "
               "class 3 leads by the given margin (computed with autograd):")
    report.table(["margin", "p(true class)", "|dL/dz| cross-entropy", "|dL/dz| MSE on softmax"],
                 [[r["margin"], f"{r['p_true']:.2e}", f"{r['ce_grad_norm']:.3f}", f"{r['mse_grad_norm']:.2e}"]
                  for r in rows])
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for records, name in ((ce, "cross-entropy"), (mse, "MSE on softmax")):
        for r in records:
            left.plot(*accuracy_curve(r),
                      color="C0" if name == "cross-entropy" else "C1", alpha=0.8,
                      label=name if r["seed"] == 0 else None)
    left.set(xlabel="optimizer step", ylabel="test accuracy", ylim=(0, 1), title="training (all seeds)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.semilogy([r["margin"] for r in rows], [r["ce_grad_norm"] for r in rows], marker="o", label="cross-entropy")
    right.semilogy([r["margin"] for r in rows], [r["mse_grad_norm"] for r in rows], marker="o", label="MSE on softmax")
    right.set(xlabel="margin of the wrong class (logits)", ylabel="|dL/dlogits|",
              title="gradient when confidently wrong")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    report.figure("loss", fig, "Left: test accuracy with each loss (`seed-lstm` otherwise). Right: gradient size "
                  "as a prediction gets confidently wrong.")
    report.table(["loss", "test accuracy % after 2 epochs", "steps to 90 %", "test accuracy % at step 100"], [
        [name, mean_spread(accuracies(records)), steps_text(records),
         mean_spread([at_step(r, 100) for r in records])]
        for name, records in (("cross-entropy", ce), ("MSE on softmax", mse))])
    worst = rows[-1]
    report.add(
        f"**Answer.** Yes, and it is measurable. With cross-entropy the gradient on the logits is `softmax - "
        f"one_hot`, whose size stays near {worst['ce_grad_norm']:.2f} however wrong the prediction is; with MSE on "
        f"softmax outputs it is multiplied by the softmax's Jacobian, which vanishes as the output saturates: at a "
        f"margin of {worst['margin']:.0f} it is {worst['mse_grad_norm']:.1e}, so a confidently wrong sample "
        "hardly teaches anything. That is the learning slowdown of the note. In training it shows, though "
        "modestly here, because Adam's steps do not depend on the overall size of the gradient (only the "
        "saturated samples' share of it shrinks): at step 100 the MSE runs score "
        f"{pct([at_step(r, 100) for r in mse])} against {pct([at_step(r, 100) for r in ce])}, they reach 90 % after "
        f"{steps_text(mse)} steps against {steps_text(ce)}, and end at {pct(accuracies(mse))} against "
        f"{pct(accuracies(ce))}.")
