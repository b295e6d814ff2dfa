"""Suite `easy`: Why is an RNN so accurate on MNIST after two epochs?"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn.plot import pyplot
from experiments.lab import (LSTM, Lab, Report, accuracies, accuracy_curve, mean_spread, parameters, pct, runs,
                             steps_text, steps_to)


def baseline(kind: str, lab: "Lab", seed: int) -> dict[str, Any]:
    """A non-recurrent model on the flattened 784 pixels, trained like the presets (batch 100, 2 epochs, Adam)."""
    train, test = lab.data
    torch.manual_seed(seed)
    if kind == "logreg":
        model: nn.Module = nn.Linear(784, 10)
    else:
        model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    x, y = train.images.reshape(len(train), -1).float() / 255, train.labels
    start = time.perf_counter()
    for epoch in range(2):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, len(x) - 99, 100):
            idx = order[i:i + 100]
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model(test.images.reshape(len(test), -1).float() / 255).argmax(1) == test.labels).float().mean()
    return {"test_accuracy": float(accuracy), "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1)}


def suite(lab: Lab, report: Report) -> None:
    lstm = runs(lab, "easy", "lstm-curve", LSTM + ("--eval-every", "50"))
    base = {kind: [m["values"] for m in (lab.measure("easy", f"baseline-{kind}", s, baseline, kind, lab)
                                         for s in lab.seeds()) if m]
            for kind in ("logreg", "mlp")}
    if not lstm or not all(base.values()):
        return report.missing("easy")
    first = lstm[0]
    confusion = np.array(first["analysis"]["confusion"])
    errors = confusion.copy()
    np.fill_diagonal(errors, 0)
    draw_curve(report, lstm, base)
    draw_confusion(report, confusion, errors)
    draw_misclassified(report, lab, first["analysis"]["misclassified"][:24])
    per_class = confusion.diagonal() / confusion.sum(1)
    worst = [int(i) for i in np.argsort(per_class)[:2]]
    pair = np.unravel_index(np.argmax(errors), errors.shape)
    report.section(
        "easy", seed=first["seed"], logreg=pct([b["test_accuracy"] for b in base["logreg"]]),
        mlp=pct([b["test_accuracy"] for b in base["mlp"]]), lstm=pct(accuracies(lstm)), steps=steps_text(lstm),
        epochs_to_90=statistics.mean(steps_to(r, 0.9) or 1200 for r in lstm) * 100 / 60000,
        worst=worst, worst_right=[per_class[w] for w in worst], pair=[int(p) for p in pair], pair_count=errors[pair],
        models_table=report.table(
            ["model", "parameters", "test accuracy % (2 epochs)", "steps to 90 % test accuracy"], [
                ["logistic regression (784 -> 10)", base["logreg"][0]["parameters"],
                 mean_spread([b["test_accuracy"] for b in base["logreg"]]), "-"],
                ["MLP (784 -> 128 -> 10, ReLU)", base["mlp"][0]["parameters"],
                 mean_spread([b["test_accuracy"] for b in base["mlp"]]), "-"],
                ["2-layer LSTM over 28 rows (`seed-lstm`)", parameters("lstm", 128),
                 mean_spread(accuracies(lstm)), steps_text(lstm)]]))


def draw_curve(report: Report, lstm: list[dict], base: dict[str, list[dict]]) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 3.6))
    for r in lstm:
        ax.plot(*accuracy_curve(r), marker=".", label=f"LSTM seed {r['seed']}")
    for kind, label in (("logreg", "logistic regression"), ("mlp", "MLP")):
        ax.axhline(statistics.mean(b["test_accuracy"] for b in base[kind]), ls="--", lw=1, color="gray")
        ax.text(20, statistics.mean(b["test_accuracy"] for b in base[kind]), f"{label} (2 epochs)", va="bottom",
                ha="left", fontsize=8)
    ax.axvline(600, color="k", lw=0.5)
    ax.set(xlabel="optimizer step (600 = one epoch)", ylabel="test accuracy", ylim=(0.5, 1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    report.draw("easy-curve", fig)


def draw_confusion(report: Report, confusion: np.ndarray, errors: np.ndarray) -> None:
    fig, ax = pyplot().subplots(figsize=(4.6, 4))
    ax.imshow(errors, cmap="Reds")
    for i in range(10):
        for j in range(10):
            if confusion[i, j] and i != j:
                ax.text(j, i, confusion[i, j], ha="center", va="center", fontsize=7)
    ax.set(xlabel="predicted", ylabel="true digit", xticks=range(10), yticks=range(10))
    report.draw("easy-confusion", fig)


def draw_misclassified(report: Report, lab: Lab, wrong: list[list[int]]) -> None:
    _, test = lab.data
    fig, axes = pyplot().subplots(3, 8, figsize=(8, 3.4))
    for ax, (index, true, pred) in zip(axes.flat, wrong):
        ax.imshow(test.images[index].numpy(), cmap="gray")
        ax.set_title(f"{true} -> {pred}", fontsize=8)
        ax.axis("off")
    report.draw("easy-misclassified", fig)
