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
from conftest import REPO, TORCHRUN, check_ok, cpu_runs_bf16_lstm, events, needs, read_results, run_module, run_train
from PIL import Image

from dist_rnn.cli import parse_config
from dist_rnn.errors import UserError
from dist_rnn.plot import log_scale, plot_runs

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
    proc = run_module("dist_rnn.plot", [*map(str, runs), "-o", str(png)], timeout=120)
    check_ok(proc)
    assert "lr 0.003: 3 loss points, 1 accuracy points" in proc.stdout
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 1000
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # something was drawn, not a blank canvas
    bad = run_module("dist_rnn.plot", [str(tmp_path), "-o", str(png)], timeout=120)
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


def test_plot_marks_resumes_and_labels_a_narrow_log_axis_plainly(tmp_path):
    """A run resumed on another world size (its metrics.jsonl as dist_rnn writes it): a dotted line
    where it resumed; loss ticks within one decade read 1.8, 2, 2.2, not 2 x 10^0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = tmp_path / "run"
    run.mkdir()
    lines = [{"event": "start", "step": 0, "world_size": 2}, {"event": "train", "step": 10, "loss": 2.3},
             {"event": "train", "step": 20, "loss": 2.1}, {"event": "resume", "step": 20, "world_size": 1},
             {"event": "train", "step": 30, "loss": 1.9}, {"event": "eval", "step": 30, "test_accuracy": 0.4}]
    run_with_val = tmp_path / "val"  # with a validation split: val_accuracy each epoch, the test set once
    run_with_val.mkdir()
    (run_with_val / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in [
        {"event": "eval", "step": 10, "val_accuracy": 0.3}, {"event": "eval", "step": 20, "val_accuracy": 0.5},
        {"event": "test", "step": 20, "test_accuracy": 0.45}]))
    assert plot_runs([run_with_val], tmp_path / "v.png")["val"] == {
        "train_points": 0, "eval_points": 1, "resumes": 0, "final_accuracy": 0.45, "val_points": 2}
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    drawn = plot_runs([run], tmp_path / "p.png")
    assert drawn["run"] == {"train_points": 3, "eval_points": 1, "resumes": 1, "final_accuracy": 0.4, "val_points": 0}
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1.8, 2.3])
    log_scale(ax)  # as plot_runs sets up its loss axis
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]
    plt.close(fig)
    assert {"1.8", "2", "2.2"} <= set(labels) and not any("10" in label for label in labels), labels


def test_console_scripts():
    """Each installed command answers --help under its own name (started together: each imports torch)."""
    names = ["dist-rnn-train", "dist-rnn-eval", "dist-rnn-bench", "dist-rnn-plot", "dist-rnn-predict", "dist-rnn-data",
             "dist-rnn-sweep"]
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
