"""wandb (offline), TensorBoard, config files, accelerate launch, plots, predict, entry points and
the terminal progress bar: each through the real package and the real command."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TORCHRUN, check_ok, cpu_runs_bf16_lstm, events, needs, read_results, real_mnist_dir, run_train
from dist_rnn.cli import parse_config
from dist_rnn.errors import UserError
from dist_rnn.predict import to_mnist

TINY = ["--hidden-size", "16", "--num-layers", "1", "--epochs", "1", "--log-every", "2", "--device", "cpu"]
BIN = Path(sys.executable).parent


def offline_env(tmp_path: Path, mode: str | None = "offline") -> dict:
    """An environment with no wandb API key (HOME without .netrc) and WANDB_MODE as given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path / "home")
    if mode is not None:
        env["WANDB_MODE"] = mode
    return env


def wandb_run_dirs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


@needs("wandb")
def test_wandb_resume_continues_one_run(mnist_dir, tmp_path):
    out = tmp_path / "run"
    common = ["--data-dir", str(mnist_dir), "--out-dir", str(out), *TINY, "--epochs", "2", "--wandb",
              "--wandb-tags", "a,b"]
    # No WANDB_MODE and no API key: offline, said in one line.
    first = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node=2",
                            "-m", "dist_rnn.train", *common, "--max-steps", "4"], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env=offline_env(tmp_path, mode=None))
    check_ok(first)
    assert first.stdout.count("wandb: no API key") == 1  # rank 0 only
    second = run_train([*common, "--max-steps", "8", "--resume", "auto"], nproc=2, env=offline_env(tmp_path))
    check_ok(second)
    assert read_results(out)["resumed_from_step"] == 4 and read_results(out)["steps"] == 8
    runs = wandb_run_dirs(out)
    assert len(runs) == 2, runs  # one per launch: only rank 0 created a run
    ids = {r.name.rsplit("-", 1)[1] for r in runs}
    assert len(ids) == 1, ids  # ... and the second continued the first's id


@needs("tensorboard")
def test_tracker_failure_never_stops_training_and_tensorboard_records(mnist_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_train(["--data-dir", str(mnist_dir), "--out-dir", str(out), *TINY, "--wandb", "--tensorboard"],
                     env=offline_env(tmp_path, mode="not-a-mode"))
    check_ok(proc)
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: wandb")]
    assert len(warnings) == 1 and "training goes on" in warnings[0]
    assert read_results(out)["steps"] == 6
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(out / "tensorboard"))
    board.Reload()
    losses = board.Scalars("train/loss")
    assert [s.step for s in losses] == [e["step"] for e in events(out, "train")] == [2, 4, 6]
    assert [round(s.value, 5) for s in losses] == [round(e["loss"], 5) for e in events(out, "train")]
    assert board.Scalars("eval/test_accuracy")[-1].value == pytest.approx(read_results(out)["test_accuracy"])


def test_config_file_then_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    path = tmp_path / "run.yaml"
    path.write_text("preset: seed-lstm\nhidden_size: 64\nlr: 1\nwandb_tags: x\n")
    c = parse_config(["--config", str(path), "--lr", "0.5"])
    assert (c.hidden_size, c.lr, c.readout, c.batch_size) == (64, 0.5, "last", 100)  # file > preset, flag > file
    for text, message in [("hidden_sise: 3\n", "unknown key 'hidden_sise'"),
                          ("hidden_size: big\n", "key 'hidden_size' must be int, got str"),
                          ("bidirectional: 1\n", "key 'bidirectional' must be bool"),
                          ("cell: transformer\n", "key 'cell' must be one of rnn, gru, lstm"),
                          ("hidden_size: [\n", "not valid yaml"), ("- 1\n", "expected a mapping")]:
        path.write_text(text)
        with pytest.raises(UserError, match=message.replace("[", r"\[")):
            parse_config(["--config", str(path)])
    with pytest.raises(UserError, match="cannot read"):
        parse_config(["--config", str(tmp_path / "missing.json")])


def test_config_json_of_a_run_repeats_it(mnist_dir, tmp_path):
    first = tmp_path / "first"
    check_ok(run_train(["--data-dir", str(mnist_dir), "--out-dir", str(first), *TINY, "--seed", "3"]))
    again = tmp_path / "again"
    proc = run_train(["--config", str(first / "config.json"), "--out-dir", str(again)])
    check_ok(proc)
    a, b = json.loads((first / "config.json").read_text()), json.loads((again / "config.json").read_text())
    assert {k: v for k, v in a.items() if k not in ("out_dir", "config")} == \
        {k: v for k, v in b.items() if k not in ("out_dir", "config")}
    assert read_results(first)["test_loss"] == read_results(again)["test_loss"]  # the same run, repeated


def test_bad_config_file_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: two\n")
    proc = run_train(["--config", str(path)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    expected = f"python -m dist_rnn.train: error: --config {path}: key 'epochs' must be int, got str 'two'"
    assert proc.stderr.strip() == expected


@needs("accelerate")
def test_accelerate_launch_two_processes(mnist_dir, tmp_path):
    """launch/accelerate.sh (accelerate launch with launch/accelerate_config.yaml); MIXED_PRECISION=bf16
    reaches dist_rnn as ACCELERATE_MIXED_PRECISION and becomes --precision bf16 (on a CPU without bf16,
    which refuses it (test_bad_input), `no` becomes fp32)."""
    out = tmp_path / "run"
    mixed, precision = ("bf16", "bf16") if cpu_runs_bf16_lstm() else ("no", "fp32")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HOME": str(tmp_path / "hf"),
           "MIXED_PRECISION": mixed}
    proc = subprocess.run(["bash", "launch/accelerate.sh", "--data-dir", str(mnist_dir), "--out-dir", str(out), *TINY,
                           "--max-steps", "4"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    check_ok(proc)
    results = read_results(out)
    assert results["world_size"] == 2 and results["steps"] == 4 and results["precision"] == precision
    assert proc.stdout.count("2 process(es)") == 1  # printed by global rank 0 only


def test_plot_overlays_runs(mnist_dir, tmp_path):
    runs = []
    for lr in ("0.003", "0.01"):
        runs.append(tmp_path / f"lr{lr}")
        check_ok(run_train(["--data-dir", str(mnist_dir), "--out-dir", str(runs[-1]), *TINY, "--lr", lr,
                            "--name", f"lr {lr}"]))
    png = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, "-m", "dist_rnn.plot", *map(str, runs), "-o", str(png)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    check_ok(proc)
    assert "lr 0.003: 3 loss points, 1 accuracy points" in proc.stdout
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 1000
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # something was drawn, not a blank canvas
    bad = subprocess.run([sys.executable, "-m", "dist_rnn.plot", str(tmp_path), "-o", str(png)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("no metrics.jsonl (is it a dist_rnn run directory?)")


def test_plot_a_run_shorter_than_log_every(mnist_dir, tmp_path):
    """No loss point yet: the panel says so, and matplotlib has nothing to warn about."""
    run = tmp_path / "short"
    check_ok(run_train(["--data-dir", str(mnist_dir), "--out-dir", str(run), "--max-steps", "2", "--log-every", "100",
                        "--hidden-size", "8"]))
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-m", "dist_rnn.plot", str(run), "-o",
                           str(tmp_path / "short.png")], cwd=REPO, capture_output=True, text=True, timeout=120)
    check_ok(proc)
    assert "0 loss points, 1 accuracy points" in proc.stdout and proc.stderr == ""


def real_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    from dist_rnn.data import load_split

    data = real_mnist_dir()
    if data is None:
        pytest.skip("real MNIST files not found (set DIST_RNN_DATA)")
    test = load_split(data, "test")
    return test.images[:n].numpy(), test.labels[:n].numpy()


def test_to_mnist_keeps_mnist_digits_and_undoes_photo_differences():
    images, _ = real_digits(100)
    kept, photo = [], []
    for image in images:
        same = to_mnist(Image.fromarray(image)).astype(float)
        kept.append(np.corrcoef(same.ravel(), image.ravel().astype(float))[0, 1])
        # dark on light, 3x larger, in colour: the same digit once normalised (up to a pixel's shift)
        again = to_mnist(Image.fromarray(255 - image).resize((84, 84), Image.BICUBIC).convert("RGB"))
        photo.append(np.corrcoef(same.ravel(), again.astype(float).ravel())[0, 1])
    assert np.median(kept) > 0.99 and min(kept) > 0.7  # an MNIST digit is already normalised
    assert np.median(photo) > 0.9 and np.percentile(photo, 10) > 0.7


def test_predict_real_digits(seed_lstm_run, tmp_path):
    images, labels = real_digits(20)
    checkpoint = read_results(seed_lstm_run)["checkpoint"]
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"plain-{i}.png")
        Image.fromarray(image).save(files[-1])
        files.append(tmp_path / f"photo-{i}.jpg")  # dark on light, larger, colour: as a photo of paper
        Image.fromarray(255 - image).resize((90, 90), Image.BICUBIC).convert("RGB").save(files[-1])
    proc = subprocess.run([sys.executable, "-m", "dist_rnn.predict", "--checkpoint", checkpoint, "--json",
                           *map(str, files)], cwd=REPO, capture_output=True, text=True, timeout=120)
    check_ok(proc)
    records = json.loads(proc.stdout)
    assert [r["file"] for r in records] == list(map(str, files))
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-4 and r["probability"] == max(r["probabilities"])
               for r in records)
    digits = np.array([r["digit"] for r in records])
    plain, photo = digits[0::2], digits[1::2]
    assert (plain == labels).mean() >= 0.9 and (photo == labels).mean() >= 0.8, (plain, photo, labels)
    assert all(r["warning"] is None for r in records)  # real digits, plain or photographed: no warning
    blank, noise = tmp_path / "blank.png", tmp_path / "noise.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(blank)  # white paper, nothing on it
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(noise)
    odd = subprocess.run([sys.executable, "-m", "dist_rnn.predict", "--checkpoint", checkpoint, str(blank), str(noise)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    check_ok(odd)
    assert odd.stdout.count("probability") == 2  # it still answers, and says the answer means little
    assert f"warning: {blank}: no digit-like ink: the image is nearly one shade" in odd.stderr
    assert f"warning: {noise}: no digit on a plain background: ink covers" in odd.stderr
    text = subprocess.run([sys.executable, "-m", "dist_rnn.predict", "--checkpoint", checkpoint, str(files[0]),
                           str(tmp_path / "nothing.png")], cwd=REPO, capture_output=True, text=True)
    assert text.returncode == 2
    assert text.stderr.strip() == f"python -m dist_rnn.predict: error: {tmp_path / 'nothing.png'}: no such file"


def test_console_scripts():
    """Each installed command answers --help under its own name (started together: each imports torch)."""
    names = ["dist-rnn-train", "dist-rnn-eval", "dist-rnn-bench", "dist-rnn-plot", "dist-rnn-predict", "dist-rnn-data"]
    procs = {name: subprocess.Popen([str(BIN / name), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name in names}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.startswith(f"usage: {name} "), (name, out[:200], err)


def test_progress_bar_on_a_terminal(mnist_dir, tmp_path):
    """On a terminal: a tqdm bar with loss, samples/s and the ETA; in a pipe: plain lines only."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a real terminal has a size
    proc = subprocess.Popen([sys.executable, "-m", "dist_rnn.train", "--data-dir", str(mnist_dir), "--out-dir",
                             str(tmp_path / "run"), *TINY, "--batch-size", "10"], cwd=REPO, stdout=follower,
                            stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "loss=" in screen and "samples_per_s=" in screen and "step/s" in screen and "<" in screen
    piped = run_train(["--data-dir", str(mnist_dir), "--out-dir", str(tmp_path / "piped"), *TINY])
    assert "loss=" not in piped.stdout and "Epoch [1/1], Step [2/6]" in piped.stdout
