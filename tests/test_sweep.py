"""`python -m dist_rnn.sweep`: real sweeps of real training runs on this machine (the SLURM array is
in test_slurm.py; the bad specs are in test_bad_input.py's catalogue)."""

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO, check_ok, events, run_module, signal_when_training, write_mnist

from dist_rnn import sweep as sweep_cli

# 4 configurations x 2 seeds of tiny runs with a validation split (what test_slurm.py submits too).
SPEC = """\
base: {epochs: 1, hidden_size: 8, num_layers: 1, batch_size: 50, val_size: 100, log_every: 2, device: cpu}
grid: {lr: [0.003, 0.03], hidden_size: [8, 16]}
seeds: [0, 1]
"""


def sweep(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_module("dist_rnn.sweep", list(args), timeout)


def report_rows(sweep_dir: Path) -> list:
    with open(sweep_dir / "report.csv") as fh:
        return list(csv.DictReader(fh))


def check_report(sweep_dir: Path, runs: int = 8) -> None:
    """Every configuration of SPEC once, over both seeds, the one with the best mean validation
    accuracy (recomputed here from each run's results.json) marked, and no other."""
    results = {p.parent.name: json.loads(p.read_text()) for p in (sweep_dir / "runs").glob("*/results.json")
               if not p.parent.name.startswith("refit,")}
    assert len(results) == runs
    rows = report_rows(sweep_dir)
    assert [(r["lr"], r["hidden_size"], r["seeds"]) for r in rows] == [
        ("0.003", "8", "2"), ("0.003", "16", "2"), ("0.03", "8", "2"), ("0.03", "16", "2")]
    means = {}
    for row in rows:
        vals = [r["best_val_accuracy"] for name, r in results.items()
                if name.startswith(f"lr={row['lr']},hidden_size={row['hidden_size']},")]
        assert abs(float(row["val_mean"]) - sum(vals) / 2) < 1e-12
        finals = [r["val_accuracy"] for name, r in results.items()
                  if name.startswith(f"lr={row['lr']},hidden_size={row['hidden_size']},")]
        assert abs(float(row["val_final_mean"]) - sum(finals) / 2) < 1e-12
        means[row["configuration"]] = sum(vals) / 2
    chosen = [r["configuration"] for r in rows if r["chosen"] == "True"]
    assert chosen == [max(means, key=means.get)]
    text = (sweep_dir / "report.md").read_text()
    assert f"| {chosen[0]} **(chosen)** | 2 |" in text or f"| {chosen[0]} **(chosen)** (refit) | 2 |" in text


def test_local_sweep_runs_reports_skips_and_lists_missing_runs(tmp_path):
    data = write_mnist(tmp_path / "data")
    (tmp_path / "spec.yaml").write_text(SPEC)
    sweep_dir = tmp_path / "sweep"
    args = [str(tmp_path / "spec.yaml"), "--out-dir", str(sweep_dir), "--data-dir", str(data), "--jobs", "2"]
    proc = sweep(*args)
    check_ok(proc)
    assert "8 runs (4 configurations x 2 seeds): 0 finished, 0 to resume, 8 to start" in proc.stdout
    assert proc.stdout.count(" ended] done ") == 8 and "started lr=0.03,hidden_size=16,seed=1 (8 of 8)" in proc.stdout
    check_report(sweep_dir)
    config = json.loads((sweep_dir / "runs" / "lr=0.03,hidden_size=16,seed=1" / "config.json").read_text())
    assert (config["lr"], config["hidden_size"], config["seed"], config["threads"]) == (0.03, 16, 1, 1)

    # The same command again: nothing is trained again.
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("runs/*/results.json")}
    again = sweep(*args)
    check_ok(again)
    assert "8 finished, 0 to resume, 0 to start" in again.stdout and "nothing to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("runs/*/results.json")} == stamps

    # A third seed, dry run: the 8 finished runs are listed as done, 4 new ones, nothing written.
    (tmp_path / "spec3.yaml").write_text(SPEC.replace("seeds: [0, 1]", "seeds: 3"))
    files = sorted(sweep_dir.rglob("*"))
    dry = sweep(str(tmp_path / "spec3.yaml"), *args[1:], "--dry-run")
    check_ok(dry)
    assert "12 runs (4 configurations x 3 seeds): 8 finished, 0 to resume, 4 to start" in dry.stdout
    assert dry.stdout.count("  done  ") == 8 and dry.stdout.count("  new  ") == 4
    assert sorted(sweep_dir.rglob("*")) == files

    # A run without results is listed, not averaged over.
    (sweep_dir / "runs" / "lr=0.003,hidden_size=8,seed=1" / "results.json").unlink()
    report = sweep("--report", str(sweep_dir))
    assert report.returncode == 1 and "- lr=0.003,hidden_size=8,seed=1: no results.json" in report.stdout
    partial = report_rows(sweep_dir)[0]
    assert (partial["seeds"], partial["planned_seeds"], partial["chosen"]) == ("1", "2", "False")
    assert "| lr=0.003 hidden_size=8 | 1 of 2 |" in report.stdout


def test_a_stopped_sweep_resumes_its_runs(tmp_path):
    """SIGTERM to the sweep: the run under way checkpoints its step, the sweep exits 143 saying how
    to continue; the same command resumes that run from its checkpoint and starts the one left."""
    data = write_mnist(tmp_path / "data")
    # 2000 steps of a few ms: still training when the signal comes, 0.2 s after its first step.
    (tmp_path / "spec.yaml").write_text("base: {hidden_size: 8, num_layers: 1, batch_size: 10, epochs: 40, "
                                        "val_size: 100, log_every: 1, device: cpu}\nseeds: 2\n")
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "dist_rnn.sweep", str(tmp_path / "spec.yaml"), "--out-dir", str(sweep_dir),
               "--data-dir", str(data)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    signal_when_training(proc, sweep_dir / "runs" / "seed=0", signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM: the runs under way saved checkpoints; the same command resumes them" in out
    assert "stopped seed=0 (checkpointed" in out and "FAILED" not in out
    assert "seed=1" not in out.split("stopped by")[0].split("started seed=0")[1]  # never started
    stopped_at = events(sweep_dir / "runs" / "seed=0", "stop")[0]["step"]

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    check_ok(again)
    assert "2 runs (1 configurations x 2 seeds): 0 finished, 1 to resume, 1 to start" in again.stdout
    results = json.loads((sweep_dir / "runs" / "seed=0" / "results.json").read_text())
    assert results["resumed_from_step"] == stopped_at > 0 and results["steps"] == 2000
    assert json.loads((sweep_dir / "runs" / "seed=1" / "results.json").read_text())["resumed_from_step"] is None


def test_a_failed_run_is_listed_and_the_sweep_fails(tmp_path, capsys):
    """A run that dies (here: a validation split larger than the training set, found when the data is
    read) is reported with its error line and log, the sweep exits 1, the report lists the run."""
    data = write_mnist(tmp_path / "data")
    (tmp_path / "spec.yaml").write_text("base: {val_size: 5000, device: cpu}\n")
    code = sweep_cli.main([str(tmp_path / "spec.yaml"), "--out-dir", str(tmp_path / "s"), "--data-dir", str(data)])
    out = capsys.readouterr().out
    assert code == 1, out
    log = tmp_path / "s" / "logs" / "seed=0.log"
    assert "FAILED seed=0 (exit 2): python -m dist_rnn.train: error: --val-size 5000" in out
    assert f"(log: {log})" in out and "Not averaged over (1 runs):" in out


def test_k_fold_sweep_runs_every_fold_reports_over_them_and_refits_the_choice(tmp_path, capsys):
    """'folds: 3': each configuration x seed runs folds 0, 1 and 2 (--val-folds 3 --val-fold F), and
    the report averages each configuration over its seeds and folds; `--refit 2` then trains the
    configuration whose final weights validate best on the whole training split, seeds 0 and 1."""
    data = write_mnist(tmp_path / "data", n_train=300, n_test=50)
    (tmp_path / "spec.yaml").write_text("base: {max_steps: 4, hidden_size: 8, num_layers: 1, batch_size: 50, "
                                        "device: cpu}\ngrid: {lr: [0.003, 0.1]}\nseeds: 1\nfolds: 3\n")
    args = [str(tmp_path / "spec.yaml"), "--out-dir", str(tmp_path / "s"), "--data-dir", str(data), "--jobs", "2"]
    code = sweep_cli.main([*args, "--refit", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "6 runs (2 configurations x 1 seeds x 3 folds)" in out, out
    configs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "s" / "configs").glob("*.json")}
    folds = {name: c for name, c in configs.items() if not name.startswith("refit,")}
    assert sorted(folds) == [f"lr={lr},seed=0,fold={f}" for lr in ("0.003", "0.1") for f in range(3)]
    assert all((c["val_folds"], c["val_fold"]) == (3, int(name[-1])) for name, c in folds.items())
    log = (tmp_path / "s" / "logs" / "lr=0.1,seed=0,fold=2.log").read_text()
    assert " validation (fold 2 of 0-2) / " in log and "best validation accuracy (fold 2 of 0-2) " in log, log
    rows = report_rows(tmp_path / "s")
    assert [(r["lr"], r["seeds"], r["planned_seeds"]) for r in rows] == [("0.003", "3", "3"), ("0.1", "3", "3")]
    assert "| runs (seeds x folds) |" in out
    assert "| lr=0.003 | 3 (1 x 3) |" in out.replace(" **(chosen)**", "").replace(" (refit)", "")

    # The refit: the row with the best mean final-weights validation accuracy (the first on a tie).
    best = max(rows, key=lambda r: float(r["val_final_mean"]))
    assert [r["refit"] for r in rows] == [str(r is best) for r in rows]
    refit = {name: c for name, c in configs.items() if name.startswith("refit,")}
    assert sorted(refit) == [f"refit,lr={best['lr']},seed={s}" for s in (0, 1)]
    assert all((c.get("val_folds", 0), c["val_size"], c["seed"]) == (0, 0, int(n[-1])) for n, c in refit.items())
    tests = [json.loads((tmp_path / "s" / "runs" / n / "results.json").read_text())["test_accuracy"]
             for n in sorted(refit)]
    assert abs(float(best["refit_test_mean"]) - sum(tests) / 2) < 1e-12
    assert "2 refit runs (1 configurations x 2 seeds): 0 finished" in out
    assert f"**Refit** of lr={best['lr']} on the whole training split: test accuracy %" in out
    assert f"seed 1 {100 * tests[1]:.2f}" in (tmp_path / "s" / "report.md").read_text()
    assert sweep_cli.main([*args, "--refit", "2"]) == 0  # again: nothing trained twice
    assert capsys.readouterr().out.count("nothing to run") == 2
    (tmp_path / "bad.yaml").write_text("base: {val_fold: 1}\n")
    assert sweep_cli.main([str(tmp_path / "bad.yaml"), "--out-dir", str(tmp_path / "b")]) == 2
    assert "base: 'val_fold' is set by the sweep ('folds: K' runs every fold)" in capsys.readouterr().err


def test_slurm_without_sbatch_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "spec.yaml").write_text("seeds: 1\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without SLURM's commands
    code = sweep_cli.main([str(tmp_path / "spec.yaml"), "--out-dir", str(tmp_path / "o"), "--slurm"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--slurm: sbatch is not on PATH" in err, err
    assert not (tmp_path / "o").exists()


def test_the_refit_choice_is_the_best_final_weights_and_a_stale_refit_is_not_reported_as_it(tmp_path):
    """Written results, no training: A has the better best checkpoints (chosen), B the better final
    weights (refit); a refit listed for A (made before the runs changed) is named, not scored as B's."""
    results = {("A", 0): (0.9, 0.5), ("A", 1): (0.9, 0.6), ("B", 0): (0.8, 0.7), ("B", 1): (0.7, 0.7)}
    runs = []
    for (config, seed), (best, final) in results.items():
        name = f"c={config},seed={seed}"
        runs.append({"name": name, "configuration": {"c": config}, "seed": seed})
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "results.json").write_text(json.dumps(
            {"test_accuracy": 0.5, "val_accuracy": final, "best_val_accuracy": best, "best_test_accuracy": 0.5,
             "best_checkpoint": str(tmp_path / "runs" / name / "checkpoints" / "best.pt")}))
    for config, test in (("A", 0.2), ("B", 0.4)):
        (tmp_path / "runs" / f"refit,c={config},seed=0").mkdir()
        (tmp_path / "runs" / f"refit,c={config},seed=0" / "results.json").write_text(json.dumps({"test_accuracy": test}))

    def report_with_refit_of(config: str) -> str:
        refit = [{"name": f"refit,c={config},seed=0", "configuration": {"c": config}, "seed": 0}]
        (tmp_path / "sweep.json").write_text(json.dumps({"spec": "s.yaml", "runs": runs, "refit": refit}))
        return sweep_cli.report(tmp_path)[0]

    text = report_with_refit_of("A")
    assert "| c=A **(chosen)** | 2 |" in text and "| c=B (refit) | 2 |" in text
    assert "the one in runs/refit,* is of c=A, not of the configuration marked (refit) now" in text
    assert [r.get("refit_test_mean", "") for r in report_rows(tmp_path)] == ["", ""]
    text = report_with_refit_of("B")
    assert "**Refit** of c=B on the whole training split: test accuracy % 40.00 (seed 0 40.00)" in text
    assert [r["refit_test_mean"] for r in report_rows(tmp_path)] == ["", "0.4"]
    assert "best checkpoints (`evaluate` or `predict --checkpoint`):\n- runs/c=A,seed=0/checkpoints/best.pt\n" \
        "- runs/c=A,seed=1/checkpoints/best.pt\n" in text
    assert "Within the noise" not in text  # A leads by 15 points, B (refit) by 15: both beyond one sd


def test_a_lead_within_one_standard_deviation_is_called_noise():
    def row(name, mean, sd, chosen=False, seeds=2):
        return {"configuration": name, "val_mean": mean, "val_sd": sd, "chosen": chosen, "seeds": seeds,
                "planned_seeds": 2}
    note = sweep_cli.within_noise([row("a", 0.80, 0.09, True), row("b", 0.791, 0.05), row("c", 0.5, 0.0)], "val",
                                  "chosen")
    assert "(chosen) a leads b by 0.90 points, within one standard deviation across runs (9.00 points)" in note
    assert "ties with b" in sweep_cli.within_noise([row("a", 0.8, 0.0, True), row("b", 0.8, 0.0)], "val", "chosen")
    assert sweep_cli.within_noise([row("a", 0.9, 0.05, True), row("b", 0.8, 0.05)], "val", "chosen") == ""
    # a row not every seed of which finished was not among the choices: not the runner-up either
    assert sweep_cli.within_noise([row("a", 0.9, 0.05, True), row("b", 0.95, 0.05, seeds=1), row("c", 0.5, 0)],
                                  "val", "chosen") == ""


def test_runs_without_a_test_set_are_tabulated_on_validation_alone(tmp_path):
    runs = [{"name": f"seed={s}", "configuration": {}, "seed": s} for s in (0, 1)]
    (tmp_path / "sweep.json").write_text(json.dumps({"spec": "s.yaml", "runs": runs}))
    for s, accuracy in ((0, 0.5), (1, 0.7)):
        (tmp_path / "runs" / f"seed={s}").mkdir(parents=True)
        (tmp_path / "runs" / f"seed={s}" / "results.json").write_text(json.dumps(
            {"test_accuracy": None, "val_accuracy": accuracy, "best_val_accuracy": accuracy, "best_test_accuracy": None}))
    text, missing = sweep_cli.report(tmp_path)
    assert "| base **(chosen)** (refit) | 2 | 60.00 ± 14.14 | 60.00 ± 14.14 | - | - |" in text and not missing
