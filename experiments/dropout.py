"""Suite `dropout`: How dropout acts inside an RNN, and whether it helps."""

from __future__ import annotations

import functools
import statistics
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dist_rnn.plot import pyplot
from experiments.lab import (
    LSTM_RATES,
    PROBE_SAMPLES,
    Lab,
    Report,
    accuracies,
    accuracy_cell,
    at_step,
    lstm_at,
    lstm_reference,
    mean_std,
    measures,
    paired_text,
    pct,
    preset_at,
    rate_name,
    runs,
    select,
    sweep_table,
)


def dropout_check(seed: int) -> dict[str, Any]:
    """Where nn.LSTM's dropout acts: reproduced by hand, and its effect on a 1-layer net."""
    torch.manual_seed(seed)
    x = torch.rand(100, 28, 28)
    stacked = nn.LSTM(28, 128, 2, batch_first=True, dropout=0.5).train()
    # The same network as two 1-layer LSTMs with an ordinary F.dropout between them.
    lower, upper = nn.LSTM(28, 128, 1, batch_first=True), nn.LSTM(128, 128, 1, batch_first=True)
    lower.load_state_dict({k: v for k, v in stacked.state_dict().items() if "_l0" in k})
    upper.load_state_dict({k.replace("_l1", "_l0"): v for k, v in stacked.state_dict().items() if "_l1" in k})
    with torch.no_grad():
        torch.manual_seed(seed + 1)
        library = stacked(x)[0]
        torch.manual_seed(seed + 1)
        by_hand = upper(F.dropout(lower(x)[0], p=0.5, training=True))[0]
        again = stacked(x)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that dropout does nothing with one layer: we show it
            single = nn.LSTM(28, 128, 1, batch_first=True, dropout=0.5).train()
        stacked.eval()
        return {
            "max_diff_library_vs_by_hand": float((library - by_hand).abs().max()),
            "top_layer_output_zero_fraction": float((library == 0).float().mean()),
            "max_diff_two_training_calls": float((library - again).abs().max()),
            "max_diff_two_eval_calls": float((stacked(x)[0] - stacked(x)[0]).abs().max()),
            "one_layer_max_diff_two_training_calls": float((single(x)[0] - single(x)[0]).abs().max()),
        }


VARIANTS = {"nn.LSTM dropout 0.2": ("--dropout", "0.2"), "nn.LSTM dropout 0.5": ("--dropout", "0.5"),
            "dropout 0.5 before the classifier": ("--head-dropout", "0.5")}


def suite(lab: Lab, report: Report) -> None:
    check = measures(lab, "dropout", "dropout-check", dropout_check, sweep=True)
    # Each variant, and no dropout (the cells suite's LSTM sweep), at its own rate chosen on validation.
    chosen = {"none": select(lab, "dropout", "lstm-128", lstm_at, LSTM_RATES)}
    chosen.update({name: select(lab, "dropout", f"lstm-dropout-{i}", functools.partial(preset_at, extra=extra),
                                LSTM_RATES) for i, (name, extra) in enumerate(VARIANTS.items(), 1)})
    if not check or not all(s.chosen for s in chosen.values()):
        return report.missing("dropout")
    rates = {name: s.chosen for name, s in chosen.items()}

    def at(name: str, lr: str) -> list[dict]:
        """An arm on the whole training set at Adam rate `lr` (seeds 0, 1, ...; per-image results kept)."""
        if name == "none":
            return lstm_reference(lab, "dropout", lr)
        i = list(VARIANTS).index(name) + 1
        return runs(lab, "dropout", rate_name(f"lstm-dropout-{i}", lr), preset_at(lr, VARIANTS[name]), paired=True)

    results = {name: at(name, lr) for name, lr in rates.items()}
    # the plan's shared-rate controls: each arm again at the other arms' chosen rates
    controls = lab.plan.controls("dropout", rates, at)
    if not all(results.values()) or not all(controls.values()):
        return report.missing("dropout")
    cmp = lab.plan.family("dropout", {arm: accuracies(rs) for arm, rs in {**results, **controls}.items()}, rates)
    every = {**{f"{name}@{lr}": results[name] for name, lr in rates.items()}, **controls}  # 'arm@lr' -> its runs
    plan_id = {c["a"]: c["id"] for c in lab.plan.comparisons("dropout")}  # variant -> its comparison
    versus = {name: cmp[plan_id[name]] for name in VARIANTS}
    # variants whose estimated effect changes sign between their own rates and a shared one
    flips = [name for name in VARIANTS if any((c.diff > 0) != (versus[name].diff > 0)
                                              for c in cmp.at(plan_id[name]).values())]
    rows = []
    for name, records in results.items():
        train_acc = [r["analysis"]["train_accuracy"] for r in records]
        vs_none = versus.get(name)
        rows.append([name, chosen[name].chosen, accuracy_cell(records), "-" if vs_none is None else
                     vs_none.cell,
                     "-" if vs_none is None else paired_text(cmp, plan_id[name], records, results["none"]),
                     mean_std(train_acc), mean_std([t - a for t, a in zip(train_acc, accuracies(records))])])
    draw(report, results, rates)
    low = min((r for rs in results.values() for r in rs), key=lambda r: r["results"]["test_accuracy"])
    first, last = at_step(low, 600), low["results"]["test_accuracy"]  # after the first epoch, and the last
    report.section(
        "dropout", seed=lab.seeds()[0], seeds=len(results["none"]), c=check[0], probe_samples=PROBE_SAMPLES,
        gap_none=statistics.mean(r["analysis"]["train_accuracy"] - r["results"]["test_accuracy"]
                                 for r in results["none"]),
        pcts={name: pct(accuracies(rs)) for name, rs in results.items()}, versus=versus,
        clear=[name for name, v in versus.items() if v.beyond],
        low={"name": next(n for n, rs in results.items() if low in rs), "seed": low["seed"], "first": first,
             "last": last} if last < first else None,
        sweep_seeds=len(lab.selection_seeds()), lr=rates, cmp=cmp, plan_id=plan_id, flips=flips,
        bound=lab.plan.bound,
        shared_rows=report.table(
            ["dropout", "Adam lr", "test accuracy %", "none at that rate, test accuracy %", "difference, points (95 % CI)"],
            [[name, lr, accuracy_cell(every[f"{name}@{lr}"]), accuracy_cell(every[f"none@{lr}"]), c.cell]
             for name in VARIANTS for lr, c in cmp.at(plan_id[name]).items()]),
        sweep_table=sweep_table(report, "dropout", chosen),
        variants_table=report.table(["dropout", "Adam lr (chosen on validation)", "test accuracy %",
                                     "difference from none, points (95 % CI)",
                                     "McNemar per seed pair: images only this / only none got right",
                                     "train accuracy %", "train - test gap, points"], rows))


def draw(report: Report, results: dict[str, list[dict]], rates: dict[str, str]) -> None:
    """Every seed's train and test accuracy per variant at its chosen rate (dots), and their means (bars)."""
    fig, ax = pyplot().subplots(figsize=(8, 3.6))
    names = list(results)
    for offset, key, color in ((-0.17, "train", "C0"), (0.17, "test", "C1")):
        for i, name in enumerate(names):
            values = [r["analysis"][f"{key}_accuracy"] for r in results[name]]
            jitter = np.linspace(-0.06, 0.06, len(values))
            ax.scatter(i + offset + jitter, values, s=14, color=color, alpha=0.8,
                       label=f"{key} accuracy (one dot per seed)" if i == 0 else None)
            ax.hlines(statistics.mean(values), i + offset - 0.12, i + offset + 0.12, color=color, lw=2)
    ax.set_xticks(range(len(names)), [n.replace(" before", "\nbefore").replace("nn.LSTM ", "nn.LSTM\n") +
                                      f"\n(Adam {rates[n]})" for n in names], fontsize=8)
    ax.set(ylabel="accuracy (bars: mean)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    report.draw("dropout", fig)
