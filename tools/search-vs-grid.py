"""A search against the grid over the same space: best validation value, optimizer steps trained
(the pruned trials' included; a repeat costs none), and each choice's refit test accuracy.

    python tools/search-vs-grid.py GRID_DIR SEARCH_DIR [--metric val_final_accuracy]

GRID_DIR and SEARCH_DIR are `dist_rnn.sweep` directories, each run with `--refit N`; prints one
Markdown table row per directory pair (docs/datasets.md, 'Search against grid').
"""

import argparse
import csv
import json
import statistics
from pathlib import Path

import optuna

from dist_rnn import search

COLUMN = {"val_accuracy": "val_mean", "val_final_accuracy": "val_final_mean"}  # the grid report's column


def refit_scores(sweep_dir: Path) -> list[float]:
    return [json.loads(p.read_text())["test_accuracy"] for p in sorted(sweep_dir.glob("runs/refit,*/results.json"))]


def steps(sweep_dir: Path) -> int:
    return sum(json.loads(p.read_text())["steps"] for p in sweep_dir.glob("runs/*/results.json")
               if not p.parent.name.startswith("refit,"))


def percent(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path)
    parser.add_argument("search", type=Path)
    parser.add_argument("--metric", default="val_final_accuracy", choices=sorted(COLUMN))
    a = parser.parse_args()
    with open(a.grid / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    best_grid = max(rows, key=lambda r: float(r[COLUMN[a.metric]]))  # (the first of equals, as the report)
    study = optuna.load_study(study_name=search.STUDY, storage=search.storage(a.search))
    trials = study.get_trials(deepcopy=False)
    best = study.best_trial
    grid_steps, search_steps = steps(a.grid), sum(t.user_attrs.get("steps", 0) for t in trials)
    states = [t.state.name.lower() for t in trials]
    print("| | grid | search |\n| --- | --- | --- |")
    print(f"| best {a.metric} % | {100 * float(best_grid[COLUMN[a.metric]]):.2f} ({best_grid['configuration']}) | "
          f"{100 * best.value:.2f} ({search.sweep.label(best.params)}) |")
    print(f"| runs or trials | {len(list(a.grid.glob('configs/[!r]*.json')))} runs | {len(trials)} trials: "
          f"{states.count('complete')} complete ({sum('copy_of' in t.user_attrs for t in trials)} repeats, untrained), "
          f"{states.count('pruned')} pruned |")
    print(f"| optimizer steps | {grid_steps} | {search_steps} ({search_steps / grid_steps:.0%} of the grid's) |")
    print(f"| refit test accuracy % (seeds) | {percent(refit_scores(a.grid))} | {percent(refit_scores(a.search))} |")


if __name__ == "__main__":
    main()
