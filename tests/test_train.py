"""Single-process training end to end: outputs, checkpoint, and the reproduction of the original script."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO, check_ok, events, idx_bytes, read_results, run_module, run_train, write_mnist

from dist_rnn.checkpoint import TrainState, load_checkpoint
from dist_rnn.config import TrainConfig
from dist_rnn.data import SPLIT_FILES, SequenceView, load_mnist
from dist_rnn.distributed import DistEnv
from dist_rnn.evaluate import evaluate
from dist_rnn.model import build_model
from dist_rnn.train import claim_new_dir


def test_short_run_outputs(mnist_dir, tmp_path):
    out = tmp_path / "run"
    check_ok(run_train(["--data-dir", str(mnist_dir), "--out-dir", str(out), "--epochs", "3",
                        "--log-every", "3", "--hidden-size", "32", "--lr", "0.02"]))
    results = read_results(out)
    assert results["steps"] == 18 and results["epochs"] == 3 and results["world_size"] == 1
    assert results["test_samples"] == 130 and results["global_batch_size"] == 100
    assert results["test_accuracy"] > 0.4  # the synthetic digits are easy (0.62 seen): chance is 0.1
    assert results["train_samples_per_s"] == pytest.approx(18 * 100 / results["train_seconds"])
    assert results["resumed_from_step"] is None and results["precision"] == "fp32"

    config = json.loads((out / "config.json").read_text())
    assert config["data_dir"] == str(mnist_dir) and config["out_dir"] == str(out) and config["device"] == "cpu"

    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_events = [e for e in events if e["event"] == "train"]
    assert [e["step"] for e in train_events] == [3, 6, 9, 12, 15, 18]
    assert all(e["loss"] > 0 and e["lr"] == 0.02 and e["samples_per_s"] > 0 for e in train_events)
    assert [e["epoch"] for e in events if e["event"] == "eval"] == [1, 2, 3]

    # The final checkpoint holds the unwrapped weights: loading them scores the same accuracy.
    checkpoint = load_checkpoint(results["checkpoint"])
    assert results["checkpoint"].endswith("checkpoints/step-18.pt")
    assert TrainState.from_checkpoint(checkpoint).step == 18
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    model = build_model(TrainConfig(**checkpoint["config"]), input_size=28)
    model.load_state_dict(checkpoint["model"])
    _, test = load_mnist(mnist_dir)
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    assert evaluate(model, test, env, 1000, "fp32")["test_accuracy"] == results["test_accuracy"]
    assert not list(out.rglob(".*tmp*"))  # no temporary file left behind


def test_max_steps_stops_mid_epoch_and_console(mnist_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_train(["--data-dir", str(mnist_dir), "--out-dir", str(out), "--max-steps", "4",
                      "--log-every", "2", "--optimizer", "sgd", "--lr", "0.1", "--grad-clip", "1.0",
                      "--precision", "bf16", "--cell", "gru", "--bidirectional"])
    check_ok(proc)
    assert read_results(out)["steps"] == 4 and read_results(out)["precision"] == "bf16"
    assert "Epoch [1/2], Step [2/6], Loss: " in proc.stdout and "Step [4/6]" in proc.stdout
    assert "Step [6/6]" not in proc.stdout
    assert (out / "checkpoints" / "step-4.pt").exists()


def test_permuted_view_mse_loss_and_eval_every(mnist_dir, tmp_path):
    """--sequence permuted trains on 1-pixel steps in the seeded order, which the checkpoint keeps, so
    `dist_rnn.evaluate` scores in the same order, of the same rows (--crop-top/--crop-bottom, kept in the
    checkpoint's config); --eval-every adds learning-curve points."""
    out = tmp_path / "run"
    check_ok(run_train(["--data-dir", str(mnist_dir), "--out-dir", str(out), "--hidden-size", "8", "--num-layers", "1",
                        "--epochs", "1", "--sequence", "permuted", "--permutation-seed", "5", "--loss", "mse",
                        "--eval-every", "2", "--head-dropout", "0.2", "--crop-top", "2", "--crop-bottom", "1"]))
    results = read_results(out)
    snapshot = load_checkpoint(results["checkpoint"])
    saved_order = TrainState.from_checkpoint(snapshot).view["pixel_order"]
    assert len(saved_order) == 25 * 28  # the rows the crop leaves
    assert saved_order == SequenceView("permuted", permutation_seed=5, crop=(2, 1)).permutation.tolist()
    assert snapshot["model"]["rnn.weight_ih_l0"].shape == (32, 1)  # one pixel per step
    evals = [e["step"] for e in events(out, "eval")]
    assert evals == [2, 4, 6]
    scored = tmp_path / "scored.json"
    check_ok(run_module("dist_rnn.evaluate", ["--checkpoint", results["checkpoint"], "--data-dir", str(mnist_dir),
                                              "--out", str(scored), "--device", "cpu"], timeout=120))
    assert json.loads(scored.read_text())["test_loss"] == pytest.approx(results["test_loss"], rel=1e-6)


def test_images_of_another_size(tmp_path):
    """Any H x W the four files agree on trains: a column view of 20 x 24 images reads 24 steps of 20 pixels."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 50)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 256, (n, 20, 24)).astype(np.uint8)
        for name, array in zip(SPLIT_FILES[split], (images, labels)):
            (tmp_path / name).write_bytes(idx_bytes(array))
    out = tmp_path / "run"
    check_ok(run_train(["--data-dir", str(tmp_path), "--out-dir", str(out), "--hidden-size", "8", "--num-layers", "1",
                        "--epochs", "1", "--sequence", "column"]))
    results = read_results(out)
    assert results["test_samples"] == 50
    assert load_checkpoint(results["checkpoint"])["model"]["rnn.weight_ih_l0"].shape == (32, 20)


@pytest.mark.parametrize("nproc", [None, 2])
def test_both_feeders_give_the_same_batches(tmp_path, nproc):
    """--loader dataloader (torchvision's MNIST through a DataLoader with the same sampler, 2 workers)
    trains on the same batches as the default in-memory feeder: the same parameters after 30 steps,
    stopped and resumed mid-epoch (the sampler's position) and across an epoch's end; with dropout,
    so a feeder that drew from the global RNG (as a DataLoader does by default) would show; with a
    validation split, so the DataLoader must read exactly the training samples it leaves."""
    data = write_mnist(tmp_path / "data", n_train=2000, n_test=100)
    args = ["--data-dir", str(data), "--hidden-size", "16", "--num-layers", "1", "--log-every", "5", "--epochs", "2",
            "--head-dropout", "0.3", "--val-size", "200"]
    weights = {}
    for loader in ("memory", "dataloader"):
        out = tmp_path / loader
        check_ok(run_train([*args, "--out-dir", str(out), "--max-steps", "15", "--loader", loader], nproc=nproc,
                           launcher="fork"))
        check_ok(run_train([*args, "--out-dir", str(out), "--max-steps", "30", "--loader", loader], nproc=nproc,
                           launcher="fork"))
        results = read_results(out)
        assert (results["steps"], results["resumed_from_step"], results["world_size"]) == (30, 15, nproc or 1)  # 18 steps/epoch
        weights[loader] = load_checkpoint(results["checkpoint"])["model"]
        losses = [e["loss"] for e in events(out, "train")]
        assert losses[0] > losses[-1]  # it trained
    assert all(torch.equal(weights["memory"][k], weights["dataloader"][k]) for k in weights["memory"])


def test_a_piped_run_reports_progress_after_10_s_whatever_log_every(tmp_path):
    """--log-every 100000 and slow steps (pixel view): the log still gets a progress line 10 s into
    training (then at least every 30 s), from rank 0 without a collective, so without the loss."""
    data = write_mnist(tmp_path / "data", n_train=3000, n_test=100)
    proc = subprocess.Popen([sys.executable, "-u", "-m", "dist_rnn.train", "--data-dir", str(data), "--out-dir",
                             str(tmp_path / "run"), "--epochs", "50", "--sequence", "pixel", "--hidden-size", "32",
                             "--log-every", "100000", "--device", "cpu"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        announced = proc.stdout.readline()
        start = time.monotonic()
        progress = proc.stdout.readline()
        waited = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    assert announced.startswith("dist_rnn ") and waited >= 9.5, (announced, waited)
    assert re.fullmatch(r"Epoch \[1/50\], Step \[\d+/30\], 0:1\d elapsed, ETA [\d:]+ \(loss every 100000 steps\)\n",
                        progress), progress


def test_validation_split_without_training_and_new_run_directories(mnist_dir, tmp_path):
    """--max-steps 0 with a validation split: scored, no best weights, said plainly. Runs started in
    the same second without --out-dir each get a directory of their own."""
    out = tmp_path / "run"
    proc = run_train(["--data-dir", str(mnist_dir), "--out-dir", str(out), "--max-steps", "0", "--val-size", "0.1"])
    check_ok(proc)
    results = read_results(out)
    assert results["best_step"] is None and results["best_test_accuracy"] is None and results["val_samples"] == 60
    assert "no best weights: nothing was trained" in proc.stdout
    cut = run_train(["--data-dir", str(mnist_dir), "--out-dir", str(tmp_path / "cut"), "--max-steps", "1",
                     "--val-size", "0.1"])  # scored at step 1, inside the first epoch: not a choice of weights
    check_ok(cut)
    assert "Epoch [1/2] validation accuracy" in cut.stdout and read_results(tmp_path / "cut")["best_step"] is None
    assert "no best weights: complete epochs choose them, and --max-steps 1 ended the run inside its first" \
        in cut.stdout
    base = str(tmp_path / "runs" / "x-20261202-120000")
    assert [claim_new_dir(base) for _ in range(3)] == [base, f"{base}-2", f"{base}-3"]
