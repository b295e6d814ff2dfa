"""Suite `easy`: Why is an RNN so accurate on MNIST after two epochs?"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn.data.splits import validation_split
from dist_rnn.plot import pyplot
from experiments.lab import (
    SELECTION_SEED,
    VAL_SIZE,
    Lab,
    Report,
    accuracies,
    accuracy_cell,
    accuracy_curve,
    choose_rate,
    lstm_reference,
    lstm_runs,
    mean_std,
    measures,
    parameters,
    pct,
    steps_text,
    steps_to,
)
from experiments.plan import Family

BASELINE_RATES = ("0.0003", "0.001", "0.003", "0.01")  # Adam rates swept for the two pixel-level baselines
MAX_SHIFT = 4  # the shifted control: each image moved by up to this many pixels each way
TEST_SHIFT_SEED = 0  # the shifted test set is drawn once, the same for every run


def shifted(images: torch.Tensor, generator: torch.Generator, most: int = MAX_SHIFT) -> torch.Tensor:
    """Each image moved by its own random whole-pixel offset, -most..most rows and columns, filled with blank
    paper: MNIST without its centring (the digits keep their size)."""
    n, h, w = images.shape
    offsets = torch.randint(-most, most + 1, (n, 2), generator=generator)
    padded = torch.nn.functional.pad(images, (most, most, most, most))
    out = torch.empty_like(images)
    for dy in range(-most, most + 1):
        for dx in range(-most, most + 1):
            pick = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().squeeze(1)
            out[pick] = padded[pick, most - dy:most - dy + h, most - dx:most - dx + w]
    return out


def shifted_baseline(kind: str, lr: str, lab: "Lab", split: str, seed: int) -> dict[str, Any]:
    """baseline() on shifted images: the training images moved anew for each seed, the test images once."""
    return baseline(kind, lr, lab, split, seed, shift=True)


def baseline(kind: str, lr: str, lab: "Lab", split: str, seed: int, shift: bool = False) -> dict[str, Any]:
    """A non-recurrent model on the flattened 784 pixels, trained like the presets (batch 100, 2 epochs, Adam):
    on the whole training set, scored on the test set (`split` 'test'), or on the training set less a
    validation split of VAL_SIZE images, the same as the training runs' (`--val-size`), scored there ('val').
    `shift`: every image moved at random first (shifted())."""
    train, test = lab.data
    if shift:
        train = dataclasses.replace(train, images=shifted(train.images, torch.Generator().manual_seed(seed)))
        test = dataclasses.replace(test, images=shifted(test.images, torch.Generator().manual_seed(TEST_SHIFT_SEED)))
    if split == "val":
        train, test, _ = validation_split(train, float(VAL_SIZE), seed)
    torch.manual_seed(seed)
    if kind == "logreg":
        model: nn.Module = nn.Linear(784, 10)
    else:
        model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(lr))
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
    return {f"{split}_accuracy": float(accuracy), "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1)}


def baselines(lab: Lab, kind: str, shift: bool = False) -> tuple[dict[str, list[dict]], Optional[str], list[dict]]:
    """A baseline's rate sweep on the validation split (at the selection seeds), the rate chosen there,
    and its runs at that rate on the whole training set, scored on the test set, at every seed (`shift`:
    on shifted images throughout)."""
    fn, name = baseline_code(kind, shift)
    reads = lab.plan.decision("easy", "baseline rates")["reads"]

    def sweep_at(lr: str) -> list[Optional[dict]]:
        return [lab.measure("easy", f"{name}-lr{lr}-val{VAL_SIZE}", seed, fn, kind, lr, lab, "val")
                for seed in lab.selection_seeds()]

    sweep, best, _ = choose_rate(BASELINE_RATES, sweep_at, lambda m: m["values"][reads])
    if best is None:
        return {}, None, []
    values = {lr: [m["values"] for m in found] for lr, found in sweep.items()}
    return values, best, baseline_test(lab, kind, best, shift)


def baseline_code(kind: str, shift: bool) -> tuple[Callable[..., dict[str, Any]], str]:
    """The measurement a baseline's records run, and the name they share ('baseline-mlp-shifted')."""
    return (shifted_baseline, f"baseline-{kind}-shifted") if shift else (baseline, f"baseline-{kind}")


def baseline_test(lab: Lab, kind: str, lr: str, shift: bool = False) -> list[dict]:
    """A baseline at Adam rate `lr` on the whole training set, scored on the test set, at every seed."""
    fn, name = baseline_code(kind, shift)
    return measures(lab, "easy", f"{name}-lr{lr}-test", fn, kind, lr, lab, "test")


def suite(lab: Lab, report: Report) -> None:
    lstm = lstm_runs(lab, "easy")
    base = {kind: baselines(lab, kind) for kind in ("logreg", "mlp")}
    moved = {kind: baselines(lab, kind, shift=True) for kind in ("logreg", "mlp")}
    if not lstm or not all(found for _, _, found in [*base.values(), *moved.values()]):
        return report.missing("easy")
    # the plan's family: the LSTM (the preset's 0.01) against the MLP at its chosen rate, and at each
    # other's rate; each baseline on centred against shifted images
    rates = {"lstm": "0.01", **{kind: lr for kind, (_, lr, _) in base.items()},
             **{f"{kind} shifted": lr for kind, (_, lr, _) in moved.items()}}

    def test_accuracies(arm: str, lr: str) -> list[float]:
        """An arm's test accuracies over seeds at Adam rate `lr`: the LSTM, or a baseline on centred or shifted images."""
        if arm == "lstm":
            return accuracies(lstm_reference(lab, "easy", lr))
        return [v["test_accuracy"] for v in baseline_test(lab, arm.split()[0], lr, shift=arm.endswith("shifted"))]

    controls = lab.plan.controls("easy", rates, test_accuracies)
    if not all(controls.values()):
        return report.missing("easy")
    first = lstm[0]
    confusion = np.array(first["analysis"]["confusion"])
    errors = confusion.copy()
    np.fill_diagonal(errors, 0)
    best = {kind: [v["test_accuracy"] for v in found] for kind, (_, _, found) in base.items()}
    shifted_acc = {kind: [v["test_accuracy"] for v in found] for kind, (_, _, found) in moved.items()}
    cmp = lab.plan.family("easy", {"lstm": accuracies(lstm), **best, **{f"{k} shifted": v for k, v in
                                                                      shifted_acc.items()}, **controls}, rates)
    draw_curve(report, lstm, best)
    draw_rows_read(report, lstm)
    draw_confusion(report, confusion, errors)
    draw_misclassified(report, lab, first["analysis"]["misclassified"][:24])
    per_class = confusion.diagonal() / confusion.sum(1)
    worst = [int(i) for i in np.argsort(per_class)[:2]]
    pair = np.unravel_index(np.argmax(errors), errors.shape)
    head = np.array([r["analysis"]["rows_read_head"] for r in lstm])  # seeds x rows
    probe_rows = lstm[0]["analysis"]["rows_read_probe"]["rows"]
    probe = np.array([r["analysis"]["rows_read_probe"]["accuracy"] for r in lstm])
    lr_of = {kind: lr for kind, (_, lr, _) in base.items()}
    report.section(
        "easy", seed=first["seed"], seeds=len(lstm), logreg=pct(best["logreg"]), mlp=pct(best["mlp"]),
        logreg_mean=statistics.mean(best["logreg"]),
        lstm=pct(accuracies(lstm)), steps=steps_text(lstm),
        epochs_to_90=statistics.mean(steps_to(r, 0.9) for r in lstm) * 100 / 60000 if all(steps_to(r, 0.9) for r in lstm)
        else None,  # (a run that never got there has no such figure)
        sweep_seeds=len(lab.selection_seeds()), val_size=int(VAL_SIZE), selection_seed=SELECTION_SEED,
        cmp=cmp, rates=rates, shifted={kind: pct(v) for kind, v in shifted_acc.items()},
        shifted_lr={kind: lr for kind, (_, lr, _) in moved.items()}, max_shift=MAX_SHIFT,
        worst=worst, worst_right=[per_class[w] for w in worst], pair=[int(p) for p in pair], pair_count=errors[pair],
        rows_to_90=int(np.argmax(head.mean(0) >= 0.9)) + 1 if (head.mean(0) >= 0.9).any() else None,
        head_at={k: head[:, k - 1].mean() for k in (7, 14, 21, 28)},
        probe_at={k: probe[:, probe_rows.index(k)].mean() for k in (1, 7, 10, 16, 28) if k in probe_rows},
        models_table=report.table(
            ["model", "parameters", "Adam lr", "test accuracy % (2 epochs)", "steps to 90 % test accuracy"], [
                ["logistic regression (784 -> 10)", base["logreg"][2][0]["parameters"], lr_of["logreg"],
                 mean_std(best["logreg"]), "-"],
                ["MLP (784 -> 128 -> 10, ReLU)", base["mlp"][2][0]["parameters"], lr_of["mlp"],
                 mean_std(best["mlp"]), "-"],
                ["2-layer LSTM over 28 rows (`seed-lstm`)", parameters("lstm", 128), "0.01",
                 accuracy_cell(lstm), steps_text(lstm)]]),
        sweep_table=baseline_sweep_table(report, base),
        shifted_table=report.table(
            ["model", "Adam lr (chosen on shifted validation images)", "test accuracy %, centred digits",
             "test accuracy %, shifted digits", "centred - shifted, points (95 % CI)"],
            [[label, moved[kind][1], mean_std(best[kind]), mean_std(shifted_acc[kind]),
              shift_cell(cmp, f"{kind}_shift")] for kind, label in (("logreg", "logistic regression"), ("mlp", "MLP"))]))


def baseline_sweep_table(report: Report, base: dict[str, tuple[dict[str, list[dict]], Optional[str], list[dict]]]
                         ) -> str:
    """The two baselines' sweeps (baselines()), a row per rate either tried ('-' where one's grid was not
    extended to it): the mean validation accuracy, '(chosen)' on each one's chosen rate."""
    rates = sorted({lr for values, _, _ in base.values() for lr in values}, key=float)

    def cell(kind: str, lr: str) -> str:
        values, chosen, _ = base[kind]
        if lr not in values:
            return "-"
        return mean_std([v["val_accuracy"] for v in values[lr]]) + (" (chosen)" if lr == chosen else "")

    return report.table(["Adam lr"] + [f"{kind} validation accuracy %" for kind in ("logistic regression", "MLP")],
                        [[lr] + [cell(kind, lr) for kind in ("logreg", "mlp")] for lr in rates])


def shift_cell(cmp: Family, name: str) -> str:
    """A table cell: centred minus shifted, its verdict, and the same at shared rates where the rates differ."""
    c, shared = cmp[name], cmp.shared(name)
    return f"{c.diff:+.2f} ± {c.margin:.2f} ({c.words}{'; ' + shared if shared else ''})"


def draw_curve(report: Report, lstm: list[dict], base: dict[str, list[float]]) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 3.6))
    for r in lstm:
        ax.plot(*accuracy_curve(r), color="C0", alpha=0.6, lw=1, label="LSTM (one line per seed)" if r is lstm[0] else None)
    for kind, label, style in (("logreg", "logistic regression", ":"), ("mlp", "MLP", "--")):
        ax.axhline(statistics.mean(base[kind]), ls=style, lw=1, color="gray", label=f"{label} (2 epochs, mean)")
    ax.axvline(600, color="k", lw=0.5)
    ax.set(xlabel="optimizer step (600 = one epoch)", ylabel="test accuracy", ylim=(0.5, 1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    report.draw("easy-curve", fig)


def draw_rows_read(report: Report, lstm: list[dict]) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 3.4))
    for r in lstm:
        head = r["analysis"]["rows_read_head"]
        probe = r["analysis"]["rows_read_probe"]
        first = r is lstm[0]
        ax.plot(range(1, len(head) + 1), head, color="C0", alpha=0.6, lw=1,
                label="the model's own head on its state after k rows" if first else None)
        ax.plot(probe["rows"], probe["accuracy"], color="C1", alpha=0.6, lw=1, marker=".",
                label="a linear probe fitted on that state" if first else None)
    ax.set(xlabel="rows read (k of 28)", ylabel="test accuracy", ylim=(0, 1), xlim=(1, 28))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    report.draw("easy-rows-read", fig)


def draw_confusion(report: Report, confusion: np.ndarray, errors: np.ndarray) -> None:
    fig, ax = pyplot().subplots(figsize=(4.6, 4))
    ax.imshow(errors, cmap="Reds")
    for i in range(10):
        for j in range(10):
            if confusion[i, j] and i != j:  # white on the darker half of the colour scale
                ax.text(j, i, confusion[i, j], ha="center", va="center", fontsize=7,
                        color="white" if errors[i, j] > errors.max() / 2 else "black")
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
