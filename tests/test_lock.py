"""One run per out-dir at a time: the lock itself under real process races, then real runs (two at
once, kill -9 and rerun, torchrun x2 against a plain run)."""

import errno
import fcntl
import json
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, check_ok, read_results, signal_when_training

from dist_rnn.errors import UserError
from dist_rnn.lock import LOCK_NAME, RunLock, held


def hammer(folder: str, rounds: int, start, holders, overlaps, taken) -> None:
    """One racer: take the lock (or be refused) again and again; while holding it, count holders."""
    lock = RunLock(Path(folder), "racer")
    start.wait()
    for _ in range(rounds):
        try:
            lock.acquire(say=lambda line: None)
        except UserError:
            continue
        with holders.get_lock():
            holders.value += 1
            if holders.value > 1:
                overlaps.value += 1
        time.sleep(0.0005)
        with holders.get_lock():
            holders.value -= 1
        taken.value += 1
        lock.release()


def test_racing_processes_never_hold_the_lock_together(tmp_path):
    """Three processes take and release one directory's lock 300 times each, as fast as they can:
    never two holders at once (release removes the file while a racer may have it open), and every
    racer gets it now and then. No lock file is left once nobody holds it."""
    folder = tmp_path / "run"
    ctx = multiprocessing.get_context("spawn")
    start, holders, overlaps = ctx.Barrier(3), ctx.Value("i", 0), ctx.Value("i", 0)
    taken = [ctx.Value("i", 0) for _ in range(3)]
    racers = [ctx.Process(target=hammer, args=(str(folder), 300, start, holders, overlaps, t)) for t in taken]
    for p in racers:
        p.start()
    for p in racers:
        p.join(120)
        assert p.exitcode == 0
    assert overlaps.value == 0 and all(t.value > 0 for t in taken), [t.value for t in taken]
    assert not (folder / LOCK_NAME).exists()


def test_a_second_lock_is_refused_naming_the_holder_and_a_dead_holders_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    first = RunLock(folder, "python -m dist_rnn.train --first")
    first.acquire(say=print)
    assert held(folder) and not held(tmp_path / "other")
    with pytest.raises(UserError) as refused:
        RunLock(folder, "second").acquire(say=print)
    assert f"`out_dir` {folder} is in use by another run: pid " in refused.value.args[0]
    assert "(python -m dist_rnn.train --first); wait for it to end" in refused.value.args[0]
    # A holder killed by SIGKILL: the kernel drops its flock; its file stays and is taken over.
    code = f"from dist_rnn.lock import RunLock; import os; RunLock({str(folder / 'k')!r}, 'doomed').acquire(print); " \
           "os.kill(os.getpid(), 9)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == -signal.SIGKILL
    assert (folder / "k" / LOCK_NAME).exists() and not held(folder / "k")
    said = []
    RunLock(folder / "k", "next").acquire(say=said.append)
    assert len(said) == 1 and said[0].startswith(f"taking over {folder / 'k' / LOCK_NAME}: the run that held it "
                                                 "has ended (pid ") and "(doomed)" in said[0]
    first.release()
    assert not (folder / LOCK_NAME).exists() and not held(folder)


def test_a_file_system_without_flock_warns_and_holds_nothing(tmp_path, monkeypatch):
    """Some FUSE and Lustre mounts answer flock(2) with ENOLCK (none is mounted here, so flock is made to
    answer so): the run goes on with one warning, and held() reports no holder instead of failing."""
    folder = tmp_path / "run"

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    said = []
    RunLock(folder, "run").acquire(say=said.append)
    assert len(said) == 1 and said[0].startswith(f"warning: {folder / LOCK_NAME}: this file system cannot lock files")
    assert held(folder) is False


def test_two_identical_runs_into_one_out_dir(tmp_path, mnist_dir):
    """Started together: one trains, the other stops in one line naming it and writes nothing. (Long
    runs, so the loser always meets a live holder; the winner is then stopped with SIGUSR1.) The
    run's metrics hold each step once."""
    out = tmp_path / "dup"
    cmd = [sys.executable, "-m", "dist_rnn.train", "--data-dir", str(mnist_dir), "--out-dir", str(out),
           "--epochs", "100", "--hidden-size", "16", "--log-every", "2", "--device", "cpu"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    deadline = time.monotonic() + 120
    while all(p.poll() is None for p in procs):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    out_text, err = loser.communicate()
    assert loser.returncode == 2 and out_text == "", err
    assert err.startswith(f"python -m dist_rnn.train: error: --out-dir {out} is in use by another run: "
                          f"pid {winner.pid} on ") and err.count("\n") == 1, err
    signal_when_training(winner, out, signal.SIGUSR1)  # checkpoint and exit 0
    assert winner.wait(120) == 0, winner.communicate()
    steps = [e["step"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if e["event"] == "train"]
    assert steps and steps == sorted(set(steps)) and not (out / LOCK_NAME).exists()


def test_kill_9_then_rerun_takes_the_lock_over_and_resumes(tmp_path, mnist_dir):
    out = tmp_path / "run"
    args = ["--data-dir", str(mnist_dir), "--out-dir", str(out), "--save-every", "3", "--hidden-size", "16",
            "--log-every", "1", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "dist_rnn.train", *args, "--epochs", "50"], cwd=REPO,
                            stdout=subprocess.DEVNULL)
    while not list((out / "checkpoints").glob("step-*.json")):  # a complete checkpoint to resume
        assert proc.poll() is None
        time.sleep(0.2)
    proc.kill()
    assert proc.wait(60) == -signal.SIGKILL and (out / LOCK_NAME).exists()
    again = subprocess.run([sys.executable, "-m", "dist_rnn.train", *args, "--max-steps", "12"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    check_ok(again)
    assert again.stdout.startswith(f"taking over {out / LOCK_NAME}: the run that held it has ended (pid {proc.pid} ")
    assert read_results(out)["resumed_from_step"] >= 3 and not (out / LOCK_NAME).exists()


def test_torchrun_run_holds_the_lock_on_global_rank_0(tmp_path, mnist_dir):
    """A torchrun x2 run locks its out-dir (rank 0 alone); a plain run into it meanwhile is refused
    naming rank 0's pid; when the torchrun run ends (stopped by SIGTERM) the lock is gone."""
    out = tmp_path / "run"
    args = ["--data-dir", str(mnist_dir), "--out-dir", str(out), "--epochs", "500", "--hidden-size", "16",
            "--log-every", "1", "--device", "cpu"]
    run = subprocess.Popen([sys.executable, "-m", "dist_rnn.torchrun", "--standalone", "--nproc_per_node=2",
                            "-m", "dist_rnn.train", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    signal_when_training(run, out, 0)  # signal 0: only wait until it trains
    holder = json.loads((out / LOCK_NAME).read_text())
    second = subprocess.run([sys.executable, "-m", "dist_rnn.train", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 2 and f"is in use by another run: pid {holder['pid']} on " in second.stderr
    run.send_signal(signal.SIGTERM)
    assert run.wait(120) == 128 + signal.SIGTERM, run.communicate()
    assert not (out / LOCK_NAME).exists()
