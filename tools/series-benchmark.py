"""The long-series benchmark of docs/datasets.md in one command: for every UCR/UEA problem the sktime
wheel ships, a patched 2-layer BiLSTM chosen on validation by `dist_rnn.sweep` (5-fold where the
training split has fewer than 300 cases, else a 20 % split over 5 seeds), its choice refit on the
whole training split with seeds 0-4 and scored once on the test split, alone and as an ensemble (their
probabilities averaged, `evaluate --checkpoint` repeated), beside 1-NN DTW (tools/dtw-baseline.py).
Finished runs are skipped, so the same command resumes.

    python tools/series-benchmark.py --out-dir bench/series [--problems OSULeaf ACSF1] [--jobs 2] [--no-dtw]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from dist_rnn import evaluate
from dist_rnn.data.series import load_series

PROBLEMS = ["ItalyPowerDemand", "JapaneseVowels", "BasicMotions", "GunPoint", "ArrowHead", "OSULeaf", "ACSF1", "PLAID"]
FOLDS_BELOW = 300  # training cases: k-fold below, one 20 % validation split (5 seeds) from here on
BASE = {"epochs": 40, "batch_size": 10, "bidirectional": True, "num_layers": 2, "device": "cpu"}
REFIT_SEEDS = 5


def spec(name: str, length: int, cases: int) -> dict:
    """The sweep: patch K/2 or K (K = round(sqrt(T))) x hidden 64 or 128 x Adam 0.001 or 0.003."""
    k = round(length ** 0.5)
    grid = {"patch": sorted({max(1, round(k / 2)), k}), "hidden_size": [64, 128], "lr": [0.001, 0.003]}
    if cases < FOLDS_BELOW:
        return {"base": {"dataset": name, **BASE}, "grid": grid, "seeds": 1, "folds": 5}
    return {"base": {"dataset": name, **BASE, "val_size": 0.2}, "grid": grid, "seeds": 5}


def dtw(name: str) -> str:
    """1-NN DTW's test accuracy % (DTW_D for several channels), by tools/dtw-baseline.py."""
    module = importlib.util.spec_from_file_location("dtw_baseline", Path(__file__).with_name("dtw-baseline.py"))
    baseline = importlib.util.module_from_spec(module)
    module.loader.exec_module(baseline)
    return f"{100 * baseline.accuracy(name):.2f}"


COLUMNS = ["problem (T, training cases)", "chosen on validation", "validation %, final weights",
           f"test %, refit ({REFIT_SEEDS} seeds)", "per seed", "test %, their ensemble", "1-NN DTW",
           "s a refit run (median)", "training minutes, all runs"]


def row(name: str, sweep_dir: Path, length: int, cases: int, dtw_score: str) -> list[str]:
    """The problem's line: the refit choice, its test scores, and the training time of every run."""
    with open(sweep_dir / "report.csv") as fh:
        chosen = next(r for r in csv.DictReader(fh) if r["refit"] == "True")
    refit_names = [r["name"] for r in json.loads((sweep_dir / "sweep.json").read_text())["refit"]]
    every = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("runs/*/results.json")}
    refit = [every[name] for name in refit_names]
    tests = [100 * r["test_accuracy"] for r in refit]
    scored = sweep_dir / "ensemble.json"
    with contextlib.redirect_stdout(io.StringIO()):  # (its per-class table: in ensemble.json)
        failed = evaluate.main([*(f"--checkpoint={r['checkpoint']}" for r in refit), "--device", "cpu",
                                "--out", str(scored)])
    if failed:
        raise SystemExit(f"{name}: evaluate of the ensemble failed")
    return [f"{name} ({length}, {cases})",
            f"patch {chosen['patch']}, hidden {chosen['hidden_size']}, lr {chosen['lr']}",
            f"{100 * float(chosen['val_final_mean']):.2f}",
            f"{statistics.fmean(tests):.2f} ± {statistics.stdev(tests):.2f}",
            " ".join(f"{t:.1f}" for t in tests), f"{100 * json.loads(scored.read_text())['test_accuracy']:.2f}",
            dtw_score,
            f"{statistics.median(r['train_seconds'] for r in refit):.0f}",
            f"{sum(r['train_seconds'] for r in every.values()) / 60:.0f}"]


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, help="specs/, one sweep directory per problem, table.md")
    parser.add_argument("--problems", nargs="+", default=PROBLEMS, metavar="NAME")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (the sweep's --jobs)")
    parser.add_argument("--no-dtw", action="store_true", help="leave out 1-NN DTW (ACSF1 and PLAID take hours)")
    args = parser.parse_args()
    out = Path(args.out_dir)
    (out / "specs").mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.problems:
        train_x, _, _, _, info = load_series(name, None)
        sweep_spec = spec(name, info.max_length, len(train_x))
        path = out / "specs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(sweep_spec, sort_keys=False))
        command = [sys.executable, "-m", "dist_rnn.sweep", str(path), "--out-dir", str(out / name),
                   "--jobs", str(args.jobs), "--refit", str(REFIT_SEEDS)]
        print(f"{name}: {' '.join(command[1:])}", flush=True)
        with open(out / f"{name}.log", "a") as log:
            if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"{name}: the sweep failed (log: {out / f'{name}.log'})")
        score = "not run" if args.no_dtw else dtw(name)
        rows.append(row(name, out / name, info.max_length, len(train_x), score))
        (out / "table.md").write_text(table(rows))
        print(" | ".join(rows[-1]), flush=True)
    print(table(rows), end="")


if __name__ == "__main__":
    main()
