"""Checkpoint files: contents, weights_only loading, integrity metadata, rotation, refusing code."""

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TORCHRUN, check_ok, read_results, run_module, run_train, write_mnist

from dist_rnn.checkpoint import (
    CheckpointManager,
    TrainState,
    latest_valid,
    list_checkpoints,
    load_checkpoint,
    metadata_path,
    prune,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from dist_rnn.errors import UserError


def test_rng_state_roundtrip_is_plain_data(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = rng_state(torch.device("cpu"))
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    state = torch.load(path, weights_only=True)  # NumPy's ndarray would be refused: stored as a list
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(state, torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_checkpoint_contents(mnist_dir, tmp_path):
    out = tmp_path / "run"
    check_ok(run_train(["--data-dir", str(mnist_dir), "--out-dir", str(out), "--max-steps", "4",
                        "--save-every", "2", "--dropout", "0.2"], nproc=2, launcher="fork"))
    ckpt = torch.load(out / "checkpoints" / "step-2.pt", map_location="cpu", weights_only=True)
    assert {"format_version", "state", "model", "optimizer", "schedule", "scaler", "rng", "config", "world_size",
            "dist_rnn_version"} == ckpt.keys()
    assert ckpt["schedule"] is None  # no --lr-schedule or --warmup-steps
    state = TrainState.from_checkpoint(ckpt)
    assert (ckpt["format_version"], state.step, state.epoch, state.batch_in_epoch) == (4, 2, 0, 2)
    assert state.view == {"kind": "images", "height": 28, "width": 28, "pixel_order": None}
    assert state.tracker_run_id and ckpt["world_size"] == 2
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert ckpt["optimizer"]["state"] and ckpt["config"]["dropout"] == 0.2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    meta = json.loads(metadata_path(out / "checkpoints" / "step-2.pt").read_text())
    assert meta["bytes"] == (out / "checkpoints" / "step-2.pt").stat().st_size and len(meta["sha256"]) == 64
    # The end of the run: epoch 0, batch 4 of 6 (mid-epoch), the epoch's evaluation logged.
    final = TrainState.from_checkpoint(load_checkpoint(out / "checkpoints" / "step-4.pt"))
    assert (final.step, final.epoch, final.batch_in_epoch) == (4, 0, 4)
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    saved = [e for e in events if e["event"] == "checkpoint"]
    assert [e["step"] for e in saved] == [2, 4] and all(e["bytes"] > 0 and e["seconds"] >= 0 for e in saved)


def test_end_of_epoch_checkpoint_points_at_next_epoch(mnist_dir, tmp_path):
    out = tmp_path / "run"
    check_ok(run_train(["--data-dir", str(mnist_dir), "--out-dir", str(out), "--epochs", "2", "--keep-last", "5"]))
    assert [s for s, _ in list_checkpoints(out)] == [12, 6]  # epoch ends only, by default
    epoch_end = TrainState.from_checkpoint(load_checkpoint(out / "checkpoints" / "step-6.pt"))
    assert (epoch_end.epoch, epoch_end.batch_in_epoch) == (1, 0)


def small_state(step):
    return {"model": {"w": torch.full((100,), float(step))}, "config": {}, "step": step}


def test_integrity_and_rotation(tmp_path):
    for step in (10, 20, 30):
        info = write_checkpoint(tmp_path, step, small_state(step))
        assert info["bytes"] > 0
    warnings = []
    assert latest_valid(tmp_path, warnings.append).name == "step-30.pt" and not warnings

    newest = tmp_path / "checkpoints" / "step-30.pt"
    newest.write_bytes(newest.read_bytes()[:-50])  # truncated
    (tmp_path / "checkpoints" / "step-20.json").unlink()  # crash between data and metadata
    assert latest_valid(tmp_path, warnings.append).name == "step-10.pt"
    assert len(warnings) == 2 and "step-30.pt" in warnings[0] and "truncated" in warnings[0]
    assert "incomplete" in warnings[1]
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(newest)

    prune(tmp_path, keep_last=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30]
    assert not (tmp_path / "checkpoints" / "step-10.json").exists()
    with pytest.raises(UserError, match="no valid checkpoint"):
        latest_valid(tmp_path, warnings.append)
    assert latest_valid(tmp_path / "empty", warnings.append) is None


def test_keep_last(mnist_dir, tmp_path):
    out = tmp_path / "run"
    check_ok(run_train(["--data-dir", str(mnist_dir), "--out-dir", str(out), "--epochs", "2",
                        "--save-every", "1", "--keep-last", "2"]))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        ["step-11.json", "step-11.pt", "step-12.json", "step-12.pt"]


class Payload:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_runs_no_code(tmp_path, mnist_dir):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker), "config": {}, "step": 1}, bad)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(bad)
    for cmd in ([sys.executable, "-m", "dist_rnn.evaluate", "--checkpoint", str(bad), "--data-dir", str(mnist_dir),
                 "--device", "cpu"],
                [sys.executable, "-m", "dist_rnn.train", "--resume", str(bad), "--data-dir", str(mnist_dir),
                 "--out-dir", str(tmp_path / "run"), "--device", "cpu"]):
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "refused" in proc.stderr, proc.stderr
    assert not marker.exists()  # and the control: unpickling it the unsafe way does run it
    torch.load(bad, weights_only=False)
    assert marker.exists()


def test_no_unsafe_load_in_package():
    sources = "".join(p.read_text() for p in (REPO / "dist_rnn").glob("*.py"))
    assert "weights_only=False" not in sources and "pickle.load" not in sources


def test_evaluate_command(mnist_dir, tmp_path):
    out = tmp_path / "run"
    check_ok(run_train(["--data-dir", str(mnist_dir), "--out-dir", str(out), "--max-steps", "6"]))
    expected = read_results(out)
    for nproc in (None, 3):
        json_out = tmp_path / f"eval-{nproc}.json"
        module = ["-m", "dist_rnn.evaluate", "--checkpoint", expected["checkpoint"], "--out", str(json_out),
                  "--device", "cpu"]
        if nproc:
            cmd = [*TORCHRUN,
                   "--standalone", f"--nproc_per_node={nproc}", *module]
        else:
            cmd = [sys.executable, *module]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        check_ok(proc)
        result = json.loads(json_out.read_text())
        assert result["test_samples"] == 130 and result["test_accuracy"] == expected["test_accuracy"]
        assert result["world_size"] == (nproc or 1) and proc.stdout.count("test accuracy") == 1
        assert result["inputs"] == "mnist, row view" and ", row view (as trained)" in proc.stdout


def pickled_object() -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": argparse.Namespace(evil=True)}, buffer)  # a Python object: weights_only refuses it
    return buffer.getvalue()


@pytest.mark.parametrize("content,words", [
    (b"", "not a checkpoint (an empty file)"), (b"\x89PNG\r\n\x1a\n....", "not a checkpoint (a PNG image)"),
    (bytes(range(200, 256)), "not a checkpoint (unrecognised binary data)"),
    (b"PK\x03\x04garbage", "not a readable checkpoint"),
    (pickled_object(), "refused: it holds Python objects, not only tensors and plain data")])
def test_wrong_files_are_named_for_what_they_are(tmp_path, content, words):
    """No advice to turn weights_only off (it would run the file's code)."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(UserError) as e:
        load_checkpoint(bad)
    assert words in str(e.value) and "weights_only" not in str(e.value)


def test_evaluate_names_a_bad_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n....")
    proc = subprocess.run([sys.executable, "-m", "dist_rnn.evaluate", "--checkpoint", str(bad), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"python -m dist_rnn.evaluate: error: {bad}: not a checkpoint (a PNG image)\n"


OLD_RUN = REPO / "tests" / "fixtures" / "a3bc583-run"  # written by dist_rnn at a3bc583 (see its README)
OLD_ARGS = ["--hidden-size", "8", "--num-layers", "1", "--sequence", "permuted", "--permutation-seed", "3",
            "--batch-size", "50", "--epochs", "2", "--log-every", "1"]


def test_checkpoint_of_an_older_version_resumes_and_evaluates(tmp_path):
    """The step-2 checkpoint of a3bc583's run, resumed to step 3, ends on that run's step-3 weights;
    its step-3 checkpoint scores what that run reported. (Bitwise on the machine that made the
    fixture; another CPU's kernels may round differently, hence the tolerances.)"""
    data = write_mnist(tmp_path / "data", n_train=200, n_test=50)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("step-2.pt", "step-2.json"):
        shutil.copy(OLD_RUN / "checkpoints" / name, run / "checkpoints" / name)
    check_ok(run_train(["--data-dir", str(data), "--out-dir", str(run), "--max-steps", "3", *OLD_ARGS]))
    results = read_results(run)
    assert (results["steps"], results["resumed_from_step"]) == (3, 2)
    old = load_checkpoint(OLD_RUN / "checkpoints" / "step-3.pt")["model"]
    new = load_checkpoint(Path(results["checkpoint"]))["model"]
    assert all(torch.allclose(old[k], new[k], rtol=0, atol=1e-6) for k in old)
    scored = tmp_path / "scored.json"
    check_ok(run_module("dist_rnn.evaluate", ["--checkpoint", str(OLD_RUN / "checkpoints" / "step-3.pt"),
                                              "--data-dir", str(data), "--out", str(scored), "--device", "cpu"]))
    expected = json.loads((OLD_RUN / "results.json").read_text())
    assert json.loads(scored.read_text())["test_accuracy"] == pytest.approx(expected["test_accuracy"], abs=1 / 50)
    assert json.loads(scored.read_text())["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-5)


def test_save_policy():
    """Every --save-every steps inside an epoch; always at an epoch's end, a stop and the run's end;
    never the same step twice (an epoch's end that is also the run's end saves once)."""
    manager = CheckpointManager(Path("unused"), keep_last=3, save_every=5)
    assert [step for step in range(1, 16) if manager.should_save(step, "step")] == [5, 10, 15]
    assert all(manager.should_save(7, boundary) for boundary in ("epoch", "stop", "end"))
    manager.last_saved_step = 10
    assert not manager.should_save(10, "end") and not manager.should_save(10, "step")
    assert not any(CheckpointManager(Path("unused"), 3, None).should_save(s, "step") for s in range(1, 100))
    with pytest.raises(ValueError):
        manager.should_save(3, "sometime")


def test_train_state_round_trip_and_the_older_formats():
    """Format 3 round-trips; formats 2 and 1 kept the view's parts elsewhere and read as format 3."""
    view = {"kind": "images", "height": 28, "width": 28, "pixel_order": [2, 0, 1]}
    state = TrainState(step=7, epoch=1, batch_in_epoch=3, train_seconds=2.5, tracker_run_id="abc", view=view)
    assert TrainState.from_dict(state.to_dict()) == state
    assert TrainState.from_checkpoint({"format_version": 3, "state": state.to_dict()}) == state
    position = {"step": 7, "epoch": 1, "batch_in_epoch": 3, "train_seconds": 2.5, "tracker_run_id": "abc"}
    assert TrainState.from_checkpoint({"format_version": 2, "state": {**position, "pixel_order": [2, 0, 1],
                                                                       "series": None}}) == state
    series = {"dataset": "t", "classes": ["a", "b"], "channels": 1, "variable_length": False, "max_length": 3,
              "mean": [0.0], "std": [1.0]}
    format_2 = TrainState.from_checkpoint({"format_version": 2, "state": {**position, "series": series}})
    assert format_2.view == {"kind": "series", **series}
    old = {"step": 7, "epoch": 1, "batch_in_epoch": 3, "samples_in_epoch": 300, "sampler": {"seed": 0, "epoch": 1},
           "train_seconds": 2.5, "wandb_run_id": "abc", "sequence_permutation": [2, 0, 1]}  # as a3bc583 wrote
    assert TrainState.from_checkpoint(old) == state
    older = TrainState.from_checkpoint({"step": 4})  # older still: no clock, no tracker
    assert older == TrainState(step=4, view={**view, "pixel_order": None})


def test_a_newer_checkpoint_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format_version": 99, "state": {}, "model": {}, "config": {}}, path)
    with pytest.raises(UserError, match="checkpoint format 99 is newer than this dist_rnn"):
        load_checkpoint(path)
