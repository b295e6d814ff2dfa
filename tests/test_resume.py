"""Resume: stop mid-epoch, continue, and end exactly where an uninterrupted run ends."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import check_ok, events, read_results, run_module, run_train, write_mnist

from dist_rnn.checkpoint import list_checkpoints, load_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """5000 training images: 50 steps per epoch at batch 100, so step 60 is in the second epoch."""
    return write_mnist(tmp_path_factory.mktemp("data"), n_train=5000, n_test=1001)


def train(data: Path, out: Path, steps: int, nproc=None, extra=()):
    check_ok(run_train(["--data-dir", str(data), "--out-dir", str(out), "--max-steps", str(steps),
                        "--hidden-size", "48", "--log-every", "10", "--save-every", "20", *extra], nproc=nproc,
                       launcher="fork"))
    results = read_results(out)
    assert results["world_size"] == (nproc or 1)
    return results


def weights(out: Path) -> dict:
    return load_checkpoint(Path(read_results(out)["checkpoint"]))["model"]


def losses(out: Path) -> dict:
    return {e["step"]: e["loss"] for e in events(out, "train")}


@pytest.mark.parametrize("nproc,extra", [
    (None, ["--dropout", "0.3"]),      # one process; dropout: the RNG state must be restored too
    (2, ["--dropout", "0.3"]),         # DDP, each rank its own RNG state
    (3, ["--batch-size", "99"]),       # 3 ranks: exact only thanks to the rank-ordered gradient mean
])
def test_stop_at_30_resume_to_60_is_bitwise_identical(data, tmp_path, nproc, extra):
    full = train(data, tmp_path / "full", 60, nproc, extra)
    train(data, tmp_path / "part", 30, nproc, extra)
    resumed = train(data, tmp_path / "part", 60, nproc, extra)  # --resume auto is the default
    assert (resumed["steps"], resumed["resumed_from_step"], full["resumed_from_step"]) == (60, 30, None)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert losses(tmp_path / "part") == losses(tmp_path / "full")  # the log reads as one run, too


# A validation split scored every 5 steps, early stopping after 3 scores without a better one: on
# this easy data the validation accuracy soon stops rising, so the run always stops early.
EARLY = ["--val-size", "500", "--eval-every", "5", "--early-stop", "3", "--hidden-size", "16", "--epochs", "20",
         "--log-every", "5", "--save-every", "5", "--keep-last", "1", "--dropout", "0.3", "--lr", "0.01"]


COSINE = ["--lr-schedule", "cosine", "--warmup-steps", "10"]
PLATEAU = ["--lr-schedule", "plateau", "--lr-patience", "0", "--lr-gamma", "0.5"]


@pytest.mark.parametrize("nproc,schedule", [(None, COSINE), (2, PLATEAU)])
def test_early_stopping_run_stopped_and_resumed_is_bitwise_identical(data, tmp_path, nproc, schedule):
    """The validation scores, the best checkpoint, the early-stop count and the learning-rate
    schedule are part of the resumed state: a run cut by --max-steps 3 steps before it would stop
    early (inside an epoch, off the --eval-every grid: its score there must change nothing), then
    resumed, stops early at the same step, with the same weights, rates, best.pt and test scores."""
    def run(out: Path, extra=()) -> dict:
        check_ok(run_train(["--data-dir", str(data), "--out-dir", str(out), *EARLY, *schedule, *extra], nproc=nproc,
                           launcher="fork"))
        return read_results(out)

    full = run(tmp_path / "full")
    assert full["early_stopped"] and full["steps"] >= 20 and full["val_samples"] == 500, full
    assert full["best_step"] < full["steps"] and full["test_samples"] == 1001
    run(tmp_path / "part", ["--max-steps", str(full["steps"] - 3)])
    resumed = run(tmp_path / "part")
    assert resumed["resumed_from_step"] == full["steps"] - 3
    for key in ("steps", "early_stopped", "best_step", "best_val_accuracy", "best_test_accuracy", "test_accuracy",
                "val_accuracy"):
        assert resumed[key] == full[key], key
    rates = {out: [e["lr"] for e in events(out, "train")] for out in (tmp_path / "full", tmp_path / "part")}
    assert rates[tmp_path / "full"] == rates[tmp_path / "part"], rates
    if nproc is None:  # the warm-up and the cosine curve (plateau cuts depend on the losses: test_schedule.py)
        assert rates[tmp_path / "full"][:2] == pytest.approx([0.01 * 5 / 11, 0.01 * 10 / 11]), rates
    for name in (f"step-{full['steps']}.pt", "best.pt"):  # --keep-last 1 rotated the others, never best.pt
        a, b = (load_checkpoint(out / "checkpoints" / name)["model"] for out in (tmp_path / "full", tmp_path / "part"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()) == \
        ["best.json", "best.pt", f"step-{full['steps']}.json", f"step-{full['steps']}.pt"]
    if nproc is None:  # best.pt is a checkpoint like any other: evaluate scores it as the run did
        proc = run_module("dist_rnn.evaluate", ["--checkpoint", full["best_checkpoint"], "--device", "cpu"])
        check_ok(proc)
        assert proc.stdout.startswith(f"test accuracy {full['best_test_accuracy']:.4f} (")


SGD_96 = ["--optimizer", "sgd", "--lr", "0.1", "--batch-size", "96"]  # 96 divides over 1, 2 and 3


@pytest.fixture(scope="module")
def two_process_runs(data, tmp_path_factory):
    """An uninterrupted 60-step run and one stopped at step 30, both by 2 processes."""
    root = tmp_path_factory.mktemp("x2")
    train(data, root / "full", 60, 2, SGD_96)
    train(data, root / "part", 30, 2, SGD_96)
    return root


@pytest.mark.parametrize("new_nproc", [None, 3])
def test_resume_on_another_world_size(data, two_process_runs, tmp_path, new_nproc):
    """Saved by 2 processes, resumed by 1 or 3 with the same global batch: the same global samples
    follow in the same order, so the run tracks the uninterrupted one up to float rounding (SGD)."""
    full, part = two_process_runs / "full", tmp_path / "part"
    shutil.copytree(two_process_runs / "part", part)
    proc = run_train(["--data-dir", str(data), "--out-dir", str(part), "--max-steps", "60", "--hidden-size", "48",
                      "--log-every", "10", "--save-every", "20", *SGD_96], nproc=new_nproc, launcher="fork")
    check_ok(proc)
    resumed = read_results(part)
    assert resumed["world_size"] == (new_nproc or 1) and resumed["resumed_from_step"] == 30
    # The log says who ran which part; the summary keeps this invocation apart from the whole run.
    starts = [(e["event"], e["step"], e["world_size"]) for e in events(part, "start") + events(part, "resume")]
    assert starts == [("start", 0, 2), ("resume", 30, new_nproc or 1)]
    assert "python -m dist_rnn.train --data-dir" in events(part, "resume")[0]["command"]
    assert resumed["invocation_steps"] == 30 and resumed["invocation_train_seconds"] < resumed["train_seconds"]
    assert "      this invocation: steps 30-60 (30 steps), " in proc.stdout
    assert f"world size {new_nproc or 1} on cpu" in proc.stdout
    assert "      whole run: 60 steps, " in proc.stdout
    assert "over every invocation (resumed from step 30)" in proc.stdout
    a, b = weights(full), weights(part)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    full_losses, part_losses = losses(full), losses(part)
    assert list(part_losses) == [10, 20, 30, 40, 50, 60]
    assert [part_losses[s] for s in (40, 50, 60)] == pytest.approx([full_losses[s] for s in (40, 50, 60)], abs=1e-4)


def test_truncated_newest_falls_back_to_previous(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, 60, extra=["--save-every", "10"])  # keeps 40, 50 (epoch end), 60
    assert [s for s, _ in list_checkpoints(out)] == [60, 50, 40]
    newest = out / "checkpoints" / "step-60.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    proc = run_train(["--data-dir", str(data), "--out-dir", str(out), "--max-steps", "70", "--hidden-size", "48"])
    check_ok(proc)
    assert proc.stdout.count("warning: skipping checkpoint") == 1 and "step-60.pt" in proc.stdout
    results = read_results(out)
    assert results["resumed_from_step"] == 50 and results["steps"] == 70


def test_incompatible_resume_touches_nothing(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, 20)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = run_train(["--data-dir", str(data), "--out-dir", str(out), "--hidden-size", "64", "--cell", "gru",
                      "--max-steps", "40"])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "hidden_size 48 -> 64" in proc.stderr and "cell 'lstm' -> 'gru'" in proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_none_refuses_then_overwrite(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, 20)
    proc = run_train(["--data-dir", str(data), "--out-dir", str(out), "--resume", "none"])
    assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr
    assert [s for s, _ in list_checkpoints(out)] == [20]
    check_ok(run_train(["--data-dir", str(data), "--out-dir", str(out), "--resume", "none", "--overwrite",
                        "--max-steps", "10", "--hidden-size", "48"]))
    assert [s for s, _ in list_checkpoints(out)] == [10] and read_results(out)["resumed_from_step"] is None
    assert max(json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()) == 10


def test_resume_from_explicit_path_and_bad_paths(data, tmp_path):
    first = tmp_path / "first"
    train(data, first, 20)
    check_ok(run_train(["--data-dir", str(data), "--out-dir", str(tmp_path / "second"), "--hidden-size", "48",
                        "--max-steps", "25", "--resume", str(first / "checkpoints" / "step-20.pt")]))
    assert read_results(tmp_path / "second")["resumed_from_step"] == 20
    proc = run_train(["--data-dir", str(data), "--out-dir", str(tmp_path / "third"),
                      "--resume", str(tmp_path / "missing.pt")])
    assert proc.returncode == 2 and "no such checkpoint file" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not (tmp_path / "third").exists()
