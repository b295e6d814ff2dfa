"""Suite `views`: Rows, columns, pixels (forwards and backwards) and permuted pixels as sequences, and the
published pixel-MNIST figures."""

from __future__ import annotations

import statistics

import numpy as np

from dist_rnn.data import SequenceView
from dist_rnn.plot import pyplot
from experiments.lab import (
    VAL_SIZE,
    Lab,
    Report,
    accuracies,
    accuracy_cell,
    accuracy_curve,
    at_step,
    collapsed,
    mean_std,
    paired_text,
    rate_name,
    runs,
    select,
    sweep_table,
)

# The pixel views are 784 steps long (28x the rows): on 2 CPU cores the presets would take hours,
# so the views suite compares all the views at one small budget (and the pixel and permuted views also
# at a longer one, below), each view at its own Adam rate, chosen on validation among VIEW_RATES.
TRAIN_IMAGES = 20_000
BUDGET_STEPS = 200  # 20,000 images in batches of 100
VIEW_RATES = ("0.002", "0.005", "0.01")
VIEW_LR = "0.005"  # the rate every view was first compared at: its records' names spell no rate


def view_budget(lr: str, images: int = TRAIN_IMAGES) -> tuple[str, ...]:
    """The small budget at Adam rate `lr`: one pass over the first `images` training images (a selection
    run holds VAL_SIZE of them out, so it gets VAL_SIZE more: as many steps as the final runs)."""
    return ("--hidden-size", "64", "--num-layers", "1", "--batch-size", "100", "--lr", lr, "--grad-clip", "1",
            "--epochs", "1", "--limit-train", str(images), "--eval-every", "50")


# The two long-memory views again, trained for several full epochs with the settings of Cooijmans et
# al. where dist_rnn has them (100 units, clipping 1, rate 1e-3); Adam stands in for their RMSProp, and
# the recurrent weights keep PyTorch's initialisation. About 8 minutes an epoch per run here (2 at a
# time): too dear to sweep rates, so the rate is theirs. The pixel view is unstable at this rate (in
# runs without a validation split, 2 of 3 climbed well above chance and fell back: commit f797cce),
# so each run holds out VAL_SIZE training images and scores them every LONG_EVAL steps: the weights it
# is judged by are those of its best validation score (the test set scored once for them, and once for
# the final weights). The runs are trained in stages, each continuing the previous stage's runs where
# their directories are still here (bitwise the same as starting again, in less time), for as many
# stages as the plan's rule on validation scores says (long_stages()).
LONG_EPOCH_IMAGES = 60_000 - int(VAL_SIZE)  # the training set less the validation split
LONG_EPOCH_STEPS = LONG_EPOCH_IMAGES // 100  # batches of 100
LONG_EVAL = LONG_EPOCH_STEPS // 2  # scored on the validation split twice an epoch
TEST_CHOSEN_EPOCHS = 8  # the length commits b801a11 and b728889 chose by looking at test scores (the report says so)


def long_budget(epochs: int) -> tuple[str, ...]:
    """The longer budget: `epochs` passes over the training set less the validation split."""
    return ("--hidden-size", "100", "--num-layers", "1", "--batch-size", "100", "--lr", "0.001", "--grad-clip", "1",
            "--epochs", str(epochs), "--eval-every", str(LONG_EVAL), "--val-size", VAL_SIZE)


LONG_VIEWS = ("pixel", "permuted")

# Published test accuracies (%) on pixel / permuted MNIST, each with what was checked and against what.
# Published test accuracies on the full-length views: (model, pixel %, permuted %) per paper, and
# where each figure was seen. Only figures found in the paper itself (or its authors' source) or in
# a paper that reprints it are kept; conflicting or unfound ones are dropped and the row says so.
LITERATURE = [
    {"paper": "Le, Jaitly & Hinton 2015, arXiv:1504.00941", "models": [("IRNN", 97.0, 82.0)],
     "budget": "not read",
     "checked": "not seen in the paper (only its opening was reachable); IRNN as reprinted in Cooijmans et al.'s "
                "Table 1 (the authors' LaTeX); the LSTM figures once quoted here (65 / 36) were found in no source "
                "and are dropped"},
    {"paper": "Arjovsky, Shah & Bengio 2016 (ICML), arXiv:1511.06464",
     "models": [("LSTM", 98.2, 88.0), ("uRNN", 95.1, 91.4)], "budget": "LSTM of 128 units",
     "checked": "seen in the authors' draft (github.com/amarshah/complex_RNN, paper/uRNN/uRNN.tex, commit 94dc6fb, "
                "section 'Pixel-by-pixel MNIST'); the 97.3 / 92.6 that AntisymmetricRNN's Table 1 credits to this "
                "paper is not in it, and is dropped"},
    {"paper": "Wisdom et al. 2016 (NIPS), arXiv:1611.00035", "models": [("full-capacity uRNN (512 units)", 96.9, 94.1)],
     "budget": "batch 50, up to 200 epochs with early stopping (authors' code)",
     "checked": "not seen in the paper; as reprinted in AntisymmetricRNN's Table 1 (its review version); the LSTM "
                "figures once quoted here (97.8 / 91.3) were found in no source and are dropped"},
    {"paper": "Cooijmans et al. 2017 (ICLR), arXiv:1603.09025",
     "models": [("LSTM", 98.9, 90.2), ("BN-LSTM", 99.0, 95.4)],
     "budget": "100 units, RMSProp 1e-3, clip 1, early stopping",
     "checked": "seen: the authors' camera-ready LaTeX (github.com/cooijmanstim/recurrent-batch-normalization, "
                "paper/index.tex, table tab:seqmnist_test)"},
    {"paper": "Li et al. 2018 (CVPR), arXiv:1803.04831", "models": [("IndRNN (6 layers)", 99.0, 96.0)],
     "budget": "6 x 128 units, Adam 2e-4 divided by 10 every 600,000 steps",
     "checked": "not re-verified (its Table 1 was not reachable when this was checked); its LSTM row quotes "
                "Arjovsky et al., above"},
]


def literature_range(view: int) -> tuple[float, float]:
    """The lowest and highest published figure in the table for a view (0: pixel, 1: permuted)."""
    values = [m[1 + view] for p in LITERATURE for m in p["models"]]
    return min(values), max(values)


# Each view: its arguments. The last two read the pixel view of 20 of the 28 rows: rows 4-23 (the
# sequence ends about 20 pixels after the ink) and rows 8-27 (as long, but ending, as the whole pixel
# view does, about 109 blank pixels after it). Rows 8-27 also lose rows 4-7, which hold more ink than
# rows 24-27 do: the whole pixel view, with all the ink, is the control for that.
VIEWS = {"row": ("row", (0, 0)), "column": ("column", (0, 0)), "pixel": ("pixel", (0, 0)),
         "reversed": ("reversed", (0, 0)), "permuted": ("permuted", (0, 0)),
         "pixel, rows 4-23": ("pixel", (4, 4)), "pixel, rows 8-27": ("pixel", (8, 0))}
SHORT_VIEWS = ("row", "column")  # the 28-step views
SCANS = ("pixel", "reversed")  # the views read pixel by pixel in scanline order, whose ends are measured


def view_args(kind: str, crop: tuple[int, int]) -> tuple[str, ...]:
    """A view's arguments (a crop's flags only where it drops rows)."""
    return (("--sequence", kind) + (("--crop-top", str(crop[0])) if crop[0] else ()) +
            (("--crop-bottom", str(crop[1])) if crop[1] else ()))


def blank_tail(lab: Lab, crop: tuple[int, int], backwards: bool = False) -> float:
    """How a pixel view of the training images (rows `crop` dropped, read `backwards` or not) ends: the mean
    number of blank pixels after the last inked one."""
    images = lab.data[0].images
    inked = images[:, crop[0]:images.shape[1] - crop[1]].reshape(len(images), -1) > 0
    inked = inked if backwards else inked.flip(1)  # the sequence's end first
    return float(inked.int().argmax(1).float().mean())


def chance_line(lab: Lab) -> float:
    """The accuracy a net must beat to have left chance: always answering the test set's commonest class,
    plus three binomial standard errors of a test set that size."""
    labels = lab.data[1].labels
    share = float(labels.bincount().max()) / len(labels)
    return share + 3 * (share * (1 - share) / len(labels)) ** 0.5


def ink_lost(lab: Lab, crop: tuple[int, int]) -> float:
    """The mean number of inked pixels of a training image in the rows a crop drops."""
    images = lab.data[0].images > 0
    return float(images[:, :crop[0]].sum((1, 2)).float().mean() + images[:, images.shape[1] - crop[1]:]
                 .sum((1, 2)).float().mean())


def view_name(view: str) -> str:
    """A view's record name: 'view-pixel-rows4-23'."""
    return "view-" + view.replace(", rows ", "-rows")


def suite(lab: Lab, report: Report) -> None:
    # The longer budget first, its runs being the longest, stage by stage (every stage's records are
    # kept, and counted in the time the report took).
    of = {v: view_args(*VIEWS[v]) for v in VIEWS}  # each view's own arguments
    stages, decided = long_stages(lab, of)
    done = bool(decided) and (not decided[-1]["go_on"] or decided[-1]["capped"])  # the rule has spoken
    long = {v: rs[-1] if done else [] for v, rs in stages.items()}
    chosen = {v: select(lab, "views", view_name(v),
                        lambda lr, v=v: view_budget(lr, TRAIN_IMAGES + int(VAL_SIZE)) + of[v], VIEW_RATES)
              for v in VIEWS}
    if not all(s.chosen for s in chosen.values()) or not all(long.values()):
        return report.missing("views")
    lr = {v: s.chosen for v, s in chosen.items()}

    def at(v: str, rate: str) -> list[dict]:
        """View `v` on the small budget at Adam rate `rate` (seeds 0, 1, ...), with per-image results for
        the 28-step views, whose gap is under a point: McNemar beside Welch."""
        return runs(lab, "views", rate_name(view_name(v), rate, own=VIEW_LR), view_budget(rate) + of[v],
                    paired=v in SHORT_VIEWS)

    results = {v: at(v, lr[v]) for v in VIEWS}
    # the plan's shared-rate controls: each view again at the chosen rate of the view it is compared with
    controls = lab.plan.controls("views", lr, at)
    if not all(results.values()) or not all(controls.values()):
        return report.missing("views")
    long_epochs = decided[-1]["epochs"]
    long_steps = long_epochs * LONG_EPOCH_STEPS
    draw(report, results)
    draw_long(report, long, long_steps)
    chance = chance_line(lab)
    # each run judged by the weights of its best validation score; the final weights' scores beside them
    long_acc = {v: [r["results"]["best_test_accuracy"] for r in rs] for v, rs in long.items()}
    if None in sum(long_acc.values(), []):  # dist_rnn found best.pt holding another step (it warns)
        raise ValueError("a longer-budget run has no test score for its best validation weights")
    long_final = {v: accuracies(rs) for v, rs in long.items()}
    long_best = {v: max(a) for v, a in long_acc.items()}
    # what the last stage added: how far each seed's best validation score rose in it (0: no new best), in points
    long_gain = {v: [100 * (r["results"]["best_val_accuracy"] - before["results"]["best_val_accuracy"])
                     for r, before in zip(rs[-1], rs[-2])] for v, rs in stages.items()} if len(decided) > 1 else {}
    # the longer budget's pixel runs (the network of the published LSTMs' size): how fast, how many at a time
    pixel_rate = statistics.median(r["results"]["train_samples_per_s"] for r in long["pixel"])
    concurrent = max(r.get("concurrent_runs", 1) for r in long["pixel"])
    # views whose every selection run collapsed: their rate was chosen among nets that learned next to
    # nothing; how far apart their rates' mean validation accuracies were says how little the choice meant
    val_means = {v: [statistics.mean(s.val(rate)) for rate in s.sweep] for v, s in chosen.items()
                 if all(collapsed(r) for rs in s.sweep.values() for r in rs)}
    # a sweep like the small budget's (its rates, these seeds) for both longer-budget views
    long_sweep_runs = len(LONG_VIEWS) * len(VIEW_RATES) * len(long["pixel"])
    rate = {v: statistics.median(r["results"]["train_samples_per_s"] for r in rs) for v, rs in results.items()}
    acc = {v: accuracies(rs) for v, rs in results.items()}
    scans = {v: (kind, crop) for v, (kind, crop) in VIEWS.items() if kind in SCANS}
    tail = {v: blank_tail(lab, crop, backwards=kind == "reversed") for v, (kind, crop) in scans.items()}
    cmp = lab.plan.family("views", {**acc, **{f"{v} long": a for v, a in long_acc.items()},
                                    **{arm: accuracies(rs) for arm, rs in controls.items()}}, lr)
    report.section(
        "views", budget=" ".join(view_budget("LR")), steps=BUDGET_STEPS, seeds=len(results["row"]),
        sweep_seeds=len(chosen["row"].sweep[VIEW_RATES[0]]), rates=VIEW_RATES, lr=lr, train_images=TRAIN_IMAGES,
        val_size=int(VAL_SIZE),
        sweep_table=sweep_table(report, "view", chosen),
        sweep_collapsed={v: max(means) - min(means) for v, means in val_means.items()},
        row_column_mcnemar=paired_text(cmp, "column_vs_row", results["column"], results["row"]),
        acc={v: statistics.mean(a) for v, a in acc.items()},
        collapsed={v: sum(collapsed(r) for r in rs) for v, rs in results.items()},
        best_seed={v: max(a) for v, a in acc.items()},
        cmp=cmp,
        controls={arm: accuracy_cell(rs) for arm, rs in controls.items()}, decided=decided,
        test_chosen_epochs=TEST_CHOSEN_EPOCHS,
        rule_table=report.table(
            ["stage ends at epoch"] + [f"{v}: mean best validation accuracy % (rise in the stage, points)"
                                       for v in LONG_VIEWS] + ["the rule"],
            [[d["epochs"]] + [f"{d['score'][v]:.2f}" + (f" ({d['gains'][v]:+.2f})" if d["gains"] else "")
                              for v in LONG_VIEWS] +
             ["stop at the cap" if d["capped"] else "go on" if d["go_on"] else "stop"] for d in decided]),
        rule=lab.plan.decision("views", "longer budget"),
        long_budget=" ".join(long_budget(long_epochs)), long_steps=long_steps, long_epochs=long_epochs,
        long_eval=LONG_EVAL, epoch_images=LONG_EPOCH_IMAGES,
        long_seeds=len(long["pixel"]),
        long_acc={v: statistics.mean(a) for v, a in long_acc.items()},
        long_final={v: statistics.mean(a) for v, a in long_final.items()},
        long_collapsed={v: sum(collapsed(r) for r in rs) for v, rs in long.items()},  # the final weights
        long_learned={v: sum(a > chance for a in acc_) for v, acc_ in long_acc.items()}, chance=chance,
        # seeds whose best validation weights are above chance and whose final weights are not
        long_fell={v: sum(best > chance >= final for best, final in zip(long_acc[v], long_final[v]))
                   for v in long},
        # seeds whose final weights score below their best on validation (a tie keeps the earlier step)
        long_early={v: sum(at_step(r, long_steps, "val") < r["results"]["best_val_accuracy"] for r in rs)
                    for v, rs in long.items()},
        long_gain=long_gain,
        long_best=long_best,
        long_table=report.table(
            ["view", "seeds", "test % (best validation weights)", "best seed %", "test % (final weights)",
             "step of the best validation score, per seed", "validation % after each epoch, per seed"],
            [[v, len(rs), mean_std(long_acc[v]), f"{long_best[v] * 100:.2f}", accuracy_cell(rs),
              " / ".join(str(r["results"]["best_step"]) for r in rs),
              "; ".join(" / ".join(f"{at_step(r, step, 'val') * 100:.1f}"
                                   for step in range(LONG_EPOCH_STEPS, long_steps + 1, LONG_EPOCH_STEPS)) for r in rs)]
             for v, rs in long.items()]),
        tail=tail, ink_lost={v: ink_lost(lab, crop) for v, (_, crop) in scans.items()},
        ink=ink_lost(lab, (lab.data[0].images.shape[1], 0)),  # every row dropped: all of an image's ink
        pixel_rate=pixel_rate, concurrent=concurrent,
        long_sweep_runs=long_sweep_runs,  # and the hours it would take at the pixel runs' speed
        long_sweep_hours=long_sweep_runs * long_epochs * LONG_EPOCH_IMAGES / pixel_rate / 3600 / concurrent,
        # the runs of every stage after the first, and how many of them went on from the stage before
        long_extended=sum("extends" in r for rs in stages.values() for stage in rs[1:] for r in stage),
        long_runs=sum(len(stage) for rs in stages.values() for stage in rs[1:]),
        stage_epochs=[d["epochs"] for d in decided],
        gpu=results["pixel"][0]["machine"]["gpu"],
        views_table=report.table(
            ["view", "steps per image", "blank pixels at the end (mean)", "Adam rate (chosen)", "seeds",
             "test accuracy %", "best seed %", "training samples/s (median)"],
            [[v, SequenceView(VIEWS[v][0], crop=VIEWS[v][1]).steps, f"{tail[v]:.0f}" if v in tail else "-", lr[v],
              len(rs), accuracy_cell(rs), f"{max(acc[v]) * 100:.2f}", f"{rate[v]:.0f}"] for v, rs in results.items()]),
        published={"pixel": literature_range(0), "permuted": literature_range(1)},
        literature_table=report.table(
            ["paper", "model: pixel / permuted test accuracy %", "their budget", "checked against"],
            [[p["paper"], "; ".join(f"{m}: {a:.1f} / {b:.1f}" for m, a, b in p["models"]), p["budget"], p["checked"]]
             for p in LITERATURE] +
            [["this report", f"1-layer LSTM, 64 units: {statistics.mean(acc['pixel']) * 100:.1f} / "
              f"{statistics.mean(acc['permuted']) * 100:.1f}",
              f"{BUDGET_STEPS} steps of batch 100 (a third of an epoch)", "the records below"],
             ["this report", f"1-layer LSTM, 100 units: {statistics.mean(long_acc['pixel']) * 100:.1f} / "
              f"{statistics.mean(long_acc['permuted']) * 100:.1f}",
              f"{long_steps} steps of batch 100 ({long_epochs} epochs), Adam 1e-3, clip 1; the weights of the best "
              "validation score", "the records below"]]))


def long_stages(lab: Lab, of: dict[str, tuple[str, ...]]) -> tuple[dict[str, list[list[dict]]], list[dict]]:
    """The longer budget's runs, one list per stage and view, trained as the plan's rule says: stages of
    `stage_epochs`, the next one only while either view's mean of the rule's validation figure rose by
    `min_gain` points or more in the last one (the first stage is always followed by a second), to at
    most `max_epochs`. Also each stage's gains and whether the rule went on after it."""
    rule = lab.plan.decision("views", "longer budget")
    step, reads = int(rule["stage_epochs"]), rule["reads"]
    stages: dict[str, list[list[dict]]] = {v: [] for v in LONG_VIEWS}
    decided: list[dict] = []
    for epochs in range(step, int(rule["max_epochs"]) + 1, step):
        stage = {v: runs(lab, "views", f"view-{v}-long", long_budget(epochs) + of[v], sweep=True,
                         extends=long_budget(epochs - step) + of[v] if epochs > step else None) for v in LONG_VIEWS}
        if not all(stage.values()):  # (both views' runs asked for: a parallel round makes them together)
            return stages, decided
        for v, found in stage.items():
            stages[v].append(found)
        score = {v: [statistics.mean(r["results"][reads] for r in stage) * 100 for stage in rs]
                 for v, rs in stages.items()}
        gains = {v: s[-1] - s[-2] for v, s in score.items()} if epochs > step else {}
        go_on = not gains or any(g >= float(rule["min_gain"]) for g in gains.values())
        decided.append({"epochs": epochs, "score": {v: s[-1] for v, s in score.items()}, "gains": gains,
                        "go_on": go_on, "capped": go_on and epochs + step > int(rule["max_epochs"])})
        if not go_on:
            break
    return stages, decided


def draw(report: Report, results: dict[str, list[dict]]) -> None:
    """Every seed's test accuracy during training: the 28-step views, the 784-step views and the
    560-step crops in panels of their own, so that no view's lines hide another's."""
    fig, panels = pyplot().subplots(1, 3, figsize=(14, 3.6), sharey=True)
    groups = (("row", "column"), ("pixel", "reversed", "permuted"), ("pixel, rows 4-23", "pixel, rows 8-27"))
    for ax, names, title in zip(panels, groups, ("28 steps per image", "784 steps per image",
                                                 "560 steps: the pixel view of 20 rows")):
        for k, v in enumerate(names):
            i = list(results).index(v)
            for r in results[v]:
                ax.plot(*accuracy_curve(r), color=f"C{i}", alpha=0.7, lw=1, ls=("-", "--", ":")[k],
                        label=v if r is results[v][0] else None)
        ax.axhline(0.1, color="gray", lw=0.8, ls=":")
        ax.text(5, 0.11, "chance", fontsize=8, color="gray")
        ax.set(xlabel="optimizer step", ylim=(0, 1), xticks=np.arange(0, 201, 50), title=title)
        ax.legend(fontsize=8, title="one line per seed", title_fontsize=8)
        ax.grid(alpha=0.3)
    panels[0].set(ylabel="test accuracy")
    report.draw("views", fig)


def draw_long(report: Report, long: dict[str, list[dict]], long_steps: int) -> None:
    """Every seed's validation accuracy during the epochs of the longer budget, the two views on one
    axis, each seed's best score (the weights it is judged by) ringed."""
    fig, ax = pyplot().subplots(figsize=(7, 3.4))
    for i, (v, rs) in enumerate(long.items()):
        for r in rs:
            ax.plot(*accuracy_curve(r, "val"), color=f"C{i}", alpha=0.8, lw=1.2, marker=".",
                    label=f"{v} (one line per seed)" if r is rs[0] else None)
            ax.plot(r["results"]["best_step"], r["results"]["best_val_accuracy"], "o", mfc="none", color=f"C{i}",
                    ms=9, label="best validation score (the weights scored)" if i == 0 and r is rs[0] else None)
    ax.axhline(0.1, color="gray", lw=0.8, ls=":")
    ax.text(0.01, 0.11, "chance", fontsize=8, color="gray", transform=ax.get_yaxis_transform())
    for step in range(LONG_EPOCH_STEPS, long_steps, LONG_EPOCH_STEPS):
        ax.axvline(step, color="gray", lw=0.6, alpha=0.5)
    ax.set(xlabel="optimizer step (grey lines: epoch ends)", ylabel="validation accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    report.draw("views-long", fig)
