"""A sweep spec's `search`: an Optuna study of real training runs, here and as SLURM array tasks
(on slurm/local-cluster.sh's cluster, skipped without one; beside test_slurm.py so the two long
files run in parallel): bad specs refused in one line, pruning under torchrun, a stop and a resume that
record every trial once, repeats recorded without training, the report and the refit."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TORCHRUN, check_ok, events, free_port, write_mnist
from test_slurm import cluster_problem

from dist_rnn import search
from dist_rnn import sweep as sweep_cli

optuna = pytest.importorskip("optuna")

BASE = "{epochs: 3, hidden_size: 8, num_layers: 1, batch_size: 50, val_size: 100, log_every: 5, device: cpu}"


def study_of(sweep_dir: Path):
    return optuna.load_study(study_name=search.STUDY, storage=search.storage(sweep_dir))


def finished(trial) -> bool:
    return trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def spec(search: str = "{trials: 2}", space: str = "{lr: [0.01]}", base: str = BASE, more: str = "") -> str:
    return f"base: {base}\nsearch: {search}\nspace: {space}\n{more}"


@pytest.mark.parametrize("spec, message", [
    (spec(base="{epochs: 1}"), "a search chooses on validation scores: give 'base' a val_size"),
    (spec("{trails: 2}"), "search: unknown key 'trails' (did you mean 'trials'?)"),
    (spec("{sampler: tpe}"), "search: 'trials' is needed"),
    (spec("{trials: 0}"), "'trials' must be a whole number >= 1, got 0"),
    (spec("{trials: 2, sampler: grid}"), "'sampler' must be one of tpe, random"),
    (spec("{trials: 2, pruner: asha}"), "'pruner' must be one of median, hyperband"),
    (spec("{trials: 2, metric: test_accuracy}"), "'metric' must be one of val_accuracy"),
    (f"base: {BASE}\nsearch: {{trials: 2}}", "a search needs both 'search'"),
    (spec(space="{hiden_size: [8]}"), "unknown option 'hiden_size' (did you mean 'hidden_size'?)"),
    (spec(space="{lr: []}"), "space: lr: an empty list of choices"),
    (spec(space="{lr: {low: 0.1, high: 0.01}}"), "an empty range: low 0.1 must be below high"),
    (spec(space="{lr: {low: 0, high: 0.1, log: true}}"), "a log range must start above 0"),
    (spec(space="{lr: {low: 0.001, high: 0.1, step: 0.01, log: true}}"), "not with 'log'"),
    (spec(space="{lr: {low: 0.001, hi: 0.1}}"), "unknown key 'hi'"),
    (spec(space="{eval_batch_size: {low: 100, high: 200.5}}"), "eval_batch_size takes whole numbers"),
    (spec(space="{cell: {low: 1, high: 2}}"), "cell is not a number: give a list"),
    (spec(space="{cell: [lstm, transformer]}"), "space: cell"),
    (spec(space="{hidden_size: [8]}"), "space: hidden_size: also set in 'base'"),
    (spec(space="{seed: [0, 1]}"), "'seed' is set by the sweep"),
    (spec(more="grid: {cell: [gru]}"), "give 'grid', 'runs' or 'search', not two"),
    (f"base: {BASE}\ngrid: {{cell: [gru]}}\nspace: {{lr: [0.01]}}", "a search needs both 'search'"),
    (spec(space="{bucket_batches: [0, 4]}"), "the trial bucket_batches=4 would be refused: --bucket-batches"),
    (spec(base="{dataset: JapaneseVowels, val_size: 54}", space="{sequence: [row, pixel]}"),
     "the trial sequence=pixel would be refused: --sequence pixel applies to the image data sets"),
])
def test_a_bad_search_spec_is_one_line_and_writes_nothing(tmp_path, capsys, spec, message):
    (tmp_path / "spec.yaml").write_text(spec + "\n")
    code = sweep_cli.main([str(tmp_path / "spec.yaml"), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_refit_the_spec_cannot_make_is_refused_before_any_trial(tmp_path, capsys):
    (tmp_path / "spec.yaml").write_text(spec(base=BASE[:-1] + ", early_stop: 2}"))
    code = sweep_cli.main([str(tmp_path / "spec.yaml"), "--out-dir", str(tmp_path / "out"), "--refit", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "refit" in err and "--early-stop needs a validation split" in err, err
    assert not (tmp_path / "out").exists()


def test_a_search_records_repeats_without_training_reports_and_refits(tmp_path, capsys):
    """A space of one point: trial 0 trains, trials 1-2 repeat its options and take its outcome with
    no step trained; the report tables them with the figures; --refit 1 trains the best's options."""
    data = write_mnist(tmp_path / "data")
    (tmp_path / "spec.yaml").write_text(f"base: {BASE}\nsearch: {{trials: 3, sampler: random, metric: val_final_accuracy}}"
                                        "\nspace: {lr: [0.01]}\n")
    out = tmp_path / "out"
    code = sweep_cli.main([str(tmp_path / "spec.yaml"), "--out-dir", str(out), "--data-dir", str(data), "--refit", "1"])
    text = capsys.readouterr().out
    assert code == 0, text
    results = json.loads((out / "runs" / "trial-0000,seed=0" / "results.json").read_text())
    trials = study_of(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert [t.value for t in trials] == [results["val_accuracy"]] * 3  # the final weights' validation accuracy
    assert [t.user_attrs["steps"] for t in trials] == [results["steps"], 0, 0] and results["steps"] == 30
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["refit,lr=0.01,seed=0", "trial-0000,seed=0"]
    refit = json.loads((out / "runs" / "refit,lr=0.01,seed=0" / "results.json").read_text())
    assert refit.get("val_accuracy") is None and refit["steps"] == 36  # all 600 training samples, no validation split
    report = (out / "report.md").read_text()
    assert "| 1 | 0.01 | " in report and "complete (as trial 0) | 0 |" in report
    assert "**Best**: trial-0000 (lr=0.01)" in report and f"seed 0 {100 * refit['test_accuracy']:.2f}" in report
    for png in ("history", "parallel", "importances"):
        assert f"({png}.png)" in report and (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "report.csv") as fh:
        assert [r["state"] for r in csv.DictReader(fh)] == ["complete", "complete (as trial 0)",
                                                            "complete (as trial 0)"]


def test_a_pruned_trial_stops_both_torchrun_ranks_at_one_step(tmp_path):
    """Five finished trials with a validation loss of 0 from epoch 1: the median pruner prunes a new
    trial at its first epoch. Its run under torchrun x2 stops both ranks there (a rank that trained
    on would leave the other in a collective until `dist_timeout`), exits 0 and leaves its
    checkpoint; a worker then records the trial pruned, with the steps it trained."""
    data = write_mnist(tmp_path / "data")
    (tmp_path / "spec.yaml").write_text(f"base: {BASE}\nsearch: {{trials: 6, metric: val_loss}}\n"
                                        "space: {lr: {low: 0.001, high: 0.01}}\n")
    out = tmp_path / "out"
    found = search.read_search(str(tmp_path / "spec.yaml"), str(data))
    out.mkdir()
    study = search.open_study(out, found, create=True)
    for lr in (0.002, 0.004, 0.006, 0.008, 0.009):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=found.space, value=0.0,
                                                  intermediate_values={1: 0.0, 2: 0.0, 3: 0.0}))
    claimed = search.claim_next(study, found, out)
    run = claimed.runs[0]
    started = time.monotonic()
    proc = subprocess.run([*TORCHRUN, f"--master-port={free_port()}", "--nproc_per_node=2", "-m", "dist_rnn.train",
                           "--config", str(sweep_cli.config_file(out, run)), "--threads", "1", "--dist-timeout", "60"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    check_ok(proc)
    assert time.monotonic() - started < 60  # no rank waited out the timeout
    pruned = json.loads((out / "runs" / run.name / "pruned.json").read_text())
    assert pruned["pruned"] and pruned["steps"] == 10 and pruned["epochs"] == 1  # 500 samples / 50 a step
    assert [e["step"] for e in events(out / "runs" / run.name, "pruned")] == [10]
    assert (out / "runs" / run.name / "checkpoints" / "step-10.pt").is_file()
    assert not (out / "runs" / run.name / "results.json").exists()
    # Its worker "died" before telling the study: a worker finds the trial's claim free and its run
    # ended, records it pruned without training anything, and the study has its 6 trials.
    claimed.claim.release()
    assert search.work(out, found, jobs=1) == 0
    trials = study_of(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5 + ["PRUNED"]
    assert trials[5].user_attrs["steps"] == 10 and trials[5].intermediate_values == {1: pruned["val_loss"]}


def test_a_stopped_search_resumes_and_records_every_trial_once(tmp_path):
    """SIGTERM to a search of 12 trials, 2 at a time, mid-trial: the runs checkpoint, it exits 143;
    the same command resumes the unfinished trials and ends with exactly 12 finished trials,
    numbered 0-11, each run's directory complete."""
    data = write_mnist(tmp_path / "data")
    (tmp_path / "spec.yaml").write_text(
        "base: {epochs: 10, hidden_size: 8, num_layers: 1, batch_size: 10, val_size: 100, log_every: 5, device: cpu}\n"
        "search: {trials: 12, sampler: random, pruner: median, seed: 3}\n"
        "space: {lr: {low: 0.0003, high: 0.03, log: true}}\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dist_rnn.sweep", str(tmp_path / "spec.yaml"), "--out-dir", str(out),
               "--data-dir", str(data), "--jobs", "2"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not events(out / "runs" / "trial-0004,seed=0", "train"):
        assert time.monotonic() < deadline and proc.poll() is None, "trial 4 did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    first, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, first
    assert "stopped by SIGTERM" in first and "stopped trial-0004,seed=0 (checkpointed" in first
    unfinished = [t.number for t in study_of(out).trials if not finished(t)]
    assert 4 in unfinished and len(unfinished) <= 2

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    check_ok(again)
    assert "resumed trial-0004" in again.stdout
    trials = study_of(out).trials
    assert [t.number for t in trials] == list(range(12)) and all(finished(t) for t in trials)
    for t in trials:
        run_dir = out / "runs" / f"trial-{t.number:04d},seed=0"
        ended = json.loads((run_dir / ("pruned.json" if t.state.name == "PRUNED" else "results.json")).read_text())
        assert t.user_attrs["steps"] == ended["steps"] and (run_dir / "config.json").is_file()
    resumed = json.loads((out / "runs" / "trial-0004,seed=0" / "results.json").read_text()) \
        if trials[4].state.name == "COMPLETE" else None
    assert resumed is None or resumed["resumed_from_step"] is not None


@pytest.mark.skipif(cluster_problem() is not None, reason=str(cluster_problem()))
def test_search_workers_share_one_study_through_a_cancelled_task(tmp_path):
    """A study of 9 trials taken by 3 array tasks (`--slurm --array 3`); the task training one trial
    is cancelled mid-run; the same command again (--wait) ends with exactly 9 finished trials,
    numbered 0-8, every run's directory complete."""
    data = write_mnist(tmp_path / "data")
    (tmp_path / "spec.yaml").write_text(
        "base: {epochs: 3, hidden_size: 8, num_layers: 1, batch_size: 10, val_size: 100, log_every: 5, device: cpu}\n"
        "search: {trials: 9, sampler: random, pruner: none}\nspace: {lr: {low: 0.001, high: 0.03, log: true}}\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", str(Path(sys.executable)))}
    command = [sys.executable, "-m", "dist_rnn.sweep", str(tmp_path / "spec.yaml"), "--out-dir", str(out),
               "--data-dir", str(data), "--slurm", "--array", "3", "--sbatch-args", "--cpus-per-task=1 --time=00:10:00"]
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    job = re.search(r"submitted job array (\d+): 3 workers of a study of 9 trials", first.stdout)
    assert job, first.stdout
    # The task whose worker holds a trial that is training: its id from the worker's environment.
    deadline, task = time.monotonic() + 480, None  # (test_slurm.py may hold the nodes meanwhile)
    while task is None:
        assert time.monotonic() < deadline, "no trial trained"
        for lock in sorted((out / "claims").glob("*/run.lock")):
            trial = lock.parent.name
            try:
                pid = json.loads(lock.read_text())["pid"]
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except (OSError, ValueError, KeyError):
                continue
            if any(events(run, "train") for run in (out / "runs").glob(f"{trial},*")):
                ids = dict(v.decode().split("=", 1) for v in environ if v.startswith(b"SLURM_ARRAY_"))
                task = f"{ids['SLURM_ARRAY_JOB_ID']}_{ids['SLURM_ARRAY_TASK_ID']}"
                break
        time.sleep(0.2)
    subprocess.run(["scancel", task], check=True)
    while subprocess.run(["squeue", "-h", "-j", job[1]], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline + 300, "the array did not end"
        time.sleep(1)

    cancelled = (out / "slurm" / f"{task}.out").read_text()
    assert "CANCELLED" in cancelled and "stopped by SIGTERM: the trials under way saved checkpoints" in cancelled
    again = subprocess.run([*command, "--wait"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = optuna.load_study(study_name=search.STUDY, storage=search.storage(out)).trials
    assert [t.number for t in trials] == list(range(9)) and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        results = json.loads((out / "runs" / f"trial-{t.number:04d},seed=0" / "results.json").read_text())
        assert t.user_attrs["steps"] == results["steps"] == 150 and t.value == results["best_val_accuracy"]
    assert "9 complete, 0 pruned, 0 failed, 0 unfinished" in (out / "report.md").read_text()
