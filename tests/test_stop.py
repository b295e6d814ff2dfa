"""Graceful stop: SIGTERM stops every rank at the same step, after a checkpoint of that step."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO, TORCHRUN, check_ok, events, read_results, run_train, signal_when_training, write_mnist

from dist_rnn.checkpoint import list_checkpoints
from dist_rnn.stop import CHECK_EVERY


@pytest.mark.parametrize("nproc", [None, 2])
def test_sigterm_checkpoints_the_step_and_resume_finishes(tmp_path, nproc):
    data = write_mnist(tmp_path / "data", n_train=5000, n_test=200)
    out = tmp_path / "run"
    args = ["-m", "dist_rnn.train", "--data-dir", str(data), "--out-dir", str(out), "--max-steps", "500",
            "--epochs", "10", "--hidden-size", "48", "--log-every", "5", "--device", "cpu"]
    cmd = [sys.executable, *args] if nproc is None else [*TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    signal_when_training(proc, out, signal.SIGTERM)  # to torchrun, which forwards it to each worker
    output, _ = proc.communicate(timeout=120)

    stop = events(out, "stop")
    assert len(stop) == 1 and stop[0]["signal"] == "SIGTERM", output
    step = stop[0]["step"]
    assert 0 < step < 500 and list_checkpoints(out)[0][0] == step
    if nproc:  # the ranks agree every CHECK_EVERY steps, not at every step
        assert step % CHECK_EVERY == 0, step
    assert output.count(f"stopped by SIGTERM at step {step} of 500") == 1  # rank 0 only says it
    assert "to resume, run the same command again" in output  # --out-dir was given: true as it stands
    assert "Traceback" not in output.split("stopped by SIGTERM")[0]  # no worker traceback before it
    if nproc is None:
        assert proc.returncode == 128 + signal.SIGTERM
    else:
        assert proc.returncode != 0  # torchrun reports its own SIGTERM
    assert not (out / "results.json").exists()  # the run is not finished

    check_ok(run_train(["--data-dir", str(data), "--out-dir", str(out), "--max-steps", "500", "--epochs", "10",
                        "--hidden-size", "48", "--log-every", "5"], nproc=nproc))
    results = read_results(out)
    assert results["resumed_from_step"] == step and results["steps"] == 500


def test_stop_without_out_dir_names_the_directory_to_resume(tmp_path):
    """Without --out-dir every run gets a new timestamped directory, so "run the same command again"
    would start afresh: the stop line names the --out-dir that resumes, and it does."""
    data = write_mnist(tmp_path / "data", n_train=5000, n_test=200)
    args = ["--data-dir", str(data), "--max-steps", "500", "--epochs", "10", "--hidden-size", "48", "--log-every",
            "5", "--device", "cpu", "--name", "quick"]
    proc = subprocess.Popen([sys.executable, "-m", "dist_rnn.train", *args], cwd=tmp_path, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    signal_when_training(proc, lambda: next((tmp_path / "runs").glob("quick-*"), None), signal.SIGUSR1)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    run_dir = next((tmp_path / "runs").glob("quick-*")).relative_to(tmp_path)
    assert f"to resume, run the same command with --out-dir {run_dir} (without it, a new run starts)" in output
    check_ok(subprocess.run([sys.executable, "-m", "dist_rnn.train", *args, "--out-dir", str(run_dir)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True))
    assert read_results(tmp_path / run_dir)["resumed_from_step"] == events(tmp_path / run_dir, "stop")[0]["step"]


def test_ctrl_c_under_dist_rnn_torchrun_ends_in_one_line_per_process(tmp_path):
    """torchrun's own ending is a 20-line SignalException traceback; `python -m dist_rnn.torchrun`
    (the same launcher) ends with the worker's stop line and one line of its own."""
    data = write_mnist(tmp_path / "data", n_train=5000, n_test=200)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dist_rnn.torchrun", "--standalone", "--nproc_per_node=2",
                             "-m", "dist_rnn.train", "--data-dir", str(data), "--out-dir", str(out), "--max-steps",
                             "500", "--epochs", "10", "--hidden-size", "48", "--log-every", "5", "--device", "cpu"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    signal_when_training(proc, out, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in stdout + stderr, stderr
    step = events(out, "stop")[0]["step"]
    assert stdout.count(f"stopped by SIGINT at step {step} of 500") == 1
    ours = [line for line in stderr.splitlines() if not line.startswith(("W1", "I1", "*", "E1"))]  # torch's logger
    assert ours == ["dist_rnn.torchrun: stopped by SIGINT; the workers' last lines say where they stopped"], ours
