"""Faults under torchrun: a killed worker (elastic restart), a hung worker (timeout), a full disk."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, TORCHRUN, check_ok, events, read_results, run_train, write_mnist

from dist_rnn.checkpoint import list_checkpoints, problem


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def workers(torchrun: subprocess.Popen) -> list:
    """PIDs of torchrun's worker processes (its children), by local rank order of start."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(torchrun.pid)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def start_torchrun(args: list, extra: list = ()) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"}  # plain torchrun
    return subprocess.Popen([*TORCHRUN, "--standalone", "--nproc_per_node=2", *extra, "-m", "dist_rnn.train", *args,
                             "--device", "cpu"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_kill_9_of_a_worker_restarts_and_finishes(tmp_path):
    data = write_mnist(tmp_path / "data", n_train=5000, n_test=200)
    out = tmp_path / "run"
    args = ["--data-dir", str(data), "--out-dir", str(out), "--max-steps", "150", "--epochs", "5",
            "--save-every", "20", "--log-every", "10", "--hidden-size", "64"]
    proc = start_torchrun(args, ["--max-restarts=2"])
    wait_for(lambda: len(events(out, "checkpoint")) >= 2, proc, 180, "the second checkpoint")
    os.kill(workers(proc)[-1], signal.SIGKILL)
    time.sleep(1.0)  # the surviving rank is blocked in a collective: no newer checkpoint can complete
    newest = list_checkpoints(out)[0][0]
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    results = read_results(out)
    assert results["steps"] == 150 and results["resumed_from_step"] == newest >= 40, (results, newest)
    assert results["test_samples"] == 200


def test_hung_worker_makes_the_others_fail_within_the_timeout(tmp_path):
    data = write_mnist(tmp_path / "data", n_train=5000, n_test=200)
    out, logs = tmp_path / "run", tmp_path / "logs"
    args = ["--data-dir", str(data), "--out-dir", str(out), "--max-steps", "2000", "--epochs", "40",
            "--log-every", "5", "--hidden-size", "32", "--dist-timeout", "10"]
    proc = start_torchrun(args, ["--redirects=3", f"--log-dir={logs}"])
    wait_for(lambda: events(out, "train"), proc, 120, "the first logged step")
    rank0, rank1 = workers(proc)
    os.kill(rank1, signal.SIGSTOP)  # alive, holding its sockets, answering nothing
    stopped_at = time.monotonic()
    try:
        deadline = stopped_at + 60
        while Path(f"/proc/{rank0}").exists() and _state(rank0) != "Z":
            assert time.monotonic() < deadline, "rank 0 still waits 60 s after its peer hung"
            time.sleep(0.2)
        waited = time.monotonic() - stopped_at
    finally:
        os.kill(rank1, signal.SIGKILL)
        proc.communicate(timeout=120)
    assert waited < 10 + 8, f"rank 0 gave up after {waited:.1f} s (--dist-timeout 10)"
    err0 = next(p for p in logs.rglob("stderr.log") if p.parent.name == "0").read_text()
    lines = [line for line in err0.splitlines() if line.strip()]
    assert len(lines) == 1 and "rank 0: lost the other processes" in lines[0], err0
    assert "--dist-timeout 10 s" in lines[0]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (FileNotFoundError, IndexError):
        return "Z"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs: a real 'No space left on device' (needs root to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path, tiny_disk):
    data = write_mnist(tmp_path / "data", n_train=1000, n_test=100)
    out = tiny_disk / "run"
    # Each checkpoint is ~0.42 MB (hidden 48, with Adam's state): the third does not fit in 1 MiB.
    proc = run_train(["--data-dir", str(data), "--out-dir", str(out), "--max-steps", "30", "--epochs", "5",
                      "--save-every", "5", "--hidden-size", "48"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "No space left on device" in proc.stderr, proc.stderr
    assert "earlier checkpoints are intact" in proc.stderr
    saved = list_checkpoints(out)
    assert [s for s, _ in saved] == [10, 5] and all(problem(p) is None for _, p in saved)
    assert not [p for p in (out / "checkpoints").iterdir() if "tmp" in p.name]
    # And the run continues from there once there is room (here: a bigger disk).
    bigger = tmp_path / "elsewhere"
    subprocess.run(["cp", "-r", str(out), str(bigger)], check=True)
    check_ok(run_train(["--data-dir", str(data), "--out-dir", str(bigger), "--max-steps", "30", "--epochs", "5",
                        "--save-every", "5", "--hidden-size", "48"]))
    assert read_results(bigger)["resumed_from_step"] == 10
