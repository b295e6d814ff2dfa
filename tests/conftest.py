"""Shared test helpers: small synthetic MNIST files in the real IDX format, and real subprocess runs."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
import warm

from dist_rnn.data import SPLIT_FILES

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (pyproject's addopts) several tests run at once: each process they start
# computes on its share of the cores (dist_rnn reads OMP_NUM_THREADS), else 2 workers x 2 threads on
# 2 cores spin against each other and a 1-minute training takes 4.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    THREADS = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# torchrun as a module of this interpreter: images that install console scripts elsewhere have it too
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` need a GPU: skipped, saying so, where torch sees none (CI). The preset's
    real training (tests/test_presets.py, the suite's longest file) goes first, so that under
    pytest-xdist it runs beside the others instead of alone at the end."""
    items.sort(key=lambda item: item.module.__name__ != "test_presets")  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (tools/gpu-check.sh runs these on a GPU machine)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


def needs(module: str) -> pytest.MarkDecorator:
    """Skip a test where an optional package is not installed (a GPU image may lack wandb)."""
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


# oneDNN told to use no more than AVX2: it then fails to build a bf16 LSTM exactly as on a CPU without
# AVX-512 (an AMD EPYC with AVX2 only, say), so the refusal is tested on every machine, in a subprocess
# (oneDNN reads this once, when it starts).
CPU_WITHOUT_BF16 = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu_runs_bf16_lstm() -> bool:
    """Whether this CPU can train an LSTM in bf16 (tests that do pick fp32 where it cannot)."""
    from dist_rnn.amp import cpu_bf16_failure

    return cpu_bf16_failure("lstm") is None


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x0000 08 <ndim>, big-endian int32 dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: noise plus a bright vertical bar in column 2*label+4 (seen at every step)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    images[np.arange(n)[:, None], np.arange(4, 24), 2 * labels.astype(int)[:, None] + 4] = 255
    return images, labels


def write_mnist(root: Path, n_train: int = 600, n_test: int = 130, gz: bool = False,
                layout: str = "flat") -> Path:
    """Write the four files under root (flat or torchvision's MNIST/raw/), plain or gzip; returns root."""
    folder = root if layout == "flat" else root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic_split(n, seed)
        for name, array in zip(SPLIT_FILES[split], (images, labels)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return root


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "mnist")


def real_mnist_dir() -> Optional[Path]:
    """The real MNIST files, where present: $DIST_RNN_DATA or ../shared/data/mnist."""
    for candidate in (os.environ.get("DIST_RNN_DATA"), REPO.parent / "shared" / "data" / "mnist"):
        if candidate and (Path(candidate) / "t10k-labels-idx1-ubyte.gz").exists():
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(args: list[str], nproc: Optional[int] = None, timeout: int = 300,
              env: Optional[dict] = None, device: str = "cpu", launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """Run `python -m dist_rnn.train ARGS --device DEVICE`, or with nproc processes: under real torchrun,
    or (launcher="fork", where the launcher is not what is tested) as forked ranks (warm.run_ranks).

    The device is explicit: tests of the distribution logic run gloo on CPU on every machine (on a
    GPU machine 'auto' would give each rank a GPU of its own); GPU tests pass device="cuda"."""
    return run_module("dist_rnn.train", [*args, "--device", device], timeout, env, device, nproc,
                      real_torchrun=nproc is not None and launcher == "torchrun")


def run_module(module: str, args: list[str], timeout: int = 300, env: Optional[dict] = None,
               device: str = "cpu", nproc: Optional[int] = None, real_torchrun: bool = False,
               ) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` (`python MODULE ARGS` for a script) from the repository, output
    captured: a process of its own (or nproc ranks, as torchrun starts them), forked from an
    interpreter that has imported torch already where that is the same (tests/warm.py); else, or
    with real_torchrun, a new interpreter (or real torchrun)."""
    env = {**os.environ, **(env or {})}
    if not (real_torchrun or warm.cold(env, device)):
        return warm.run(module, args, env, REPO, timeout) if nproc is None else \
            warm.run_ranks(module, args, env, REPO, timeout, nproc)
    launcher = [sys.executable] if nproc is None else [*TORCHRUN, "--standalone", f"--nproc_per_node={nproc}"]
    target = [module] if module.endswith(".py") else ["-m", module]
    return subprocess.run([*launcher, *target, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def run_step_worker(data: Path, out: Path, optimizer: str, nproc: Optional[int] = None,
                    device: str = "cpu", lstm_dropout: float = 0.2) -> dict:
    """tests/static_step_worker.py (the graphed step against the eager one), as one process or nproc ranks."""
    check_ok(run_module(str(REPO / "tests" / "static_step_worker.py"),
                        [str(data), str(out), optimizer, device, str(lstm_dropout)], device=device, nproc=nproc))
    return json.loads(out.read_text())


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def events(out_dir: Path, kind: str) -> list:
    """The `kind` events a run has logged to metrics.jsonl so far (none while it does not exist)."""
    path = out_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def signal_when_training(proc: subprocess.Popen, run_dir: "Path | Callable[[], Optional[Path]]",
                         signum: int) -> None:
    """Wait (at most 120 s) until the run in run_dir (or the dir the callable finds) has logged a
    training step, then send `signum` to proc."""
    find = run_dir if callable(run_dir) else (lambda: run_dir)
    deadline = time.monotonic() + 120
    while not ((found := find()) is not None and events(found, "train")):
        assert time.monotonic() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.2)
    proc.send_signal(signum)


def read_results(out_dir: Path) -> dict:
    return json.loads((out_dir / "results.json").read_text())


def synthetic_series(n: int, seed: int, channels: int = 2, variable: bool = True,
                     classes: tuple = ("low", "mid", "high")) -> tuple[list, list]:
    """n sequences (length 5-20, or 12 for all) whose class is the frequency of a sine in channel 0
    (other channels: noise): learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    sequences, labels = [], []
    for i in range(n):
        k = i % len(classes)
        length = int(rng.integers(5, 21)) if variable else 12
        t = np.arange(length)
        s = rng.normal(0, 0.3, (length, channels)) + 5.0
        s[:, 0] += np.sin(t * (0.4 + 0.8 * k) + rng.uniform(0, 6))
        sequences.append(s)
        labels.append(classes[k])
    return sequences, labels


def ts_text(sequences: list, labels: list, classes: tuple, problem: str = "Synthetic") -> str:
    """The .ts file of (length, channels) sequences and their labels."""
    channels = sequences[0].shape[1]
    lines = ["# written by tests/conftest.py", f"@problemName {problem}", "@timeStamps false", "@missing false",
             f"@univariate {'true' if channels == 1 else 'false'}", f"@dimensions {channels}",
             "@equalLength false", f"@classLabel true {' '.join(classes)}", "@data"]
    for s, label in zip(sequences, labels):
        lines.append(":".join(",".join(f"{v:.6f}" for v in s[:, c]) for c in range(channels)) + f":{label}")
    return "\n".join(lines) + "\n"


def write_ts(folder: Path, name: str = "Synthetic", n_train: int = 300, n_test: int = 91,
             variable: bool = True) -> Path:
    """folder/NAME/NAME_TRAIN.ts and NAME_TEST.ts of synthetic_series; returns the training file."""
    classes = ("low", "mid", "high")
    (folder / name).mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("TRAIN", n_train, 1), ("TEST", n_test, 2)):
        seqs, labels = synthetic_series(n, seed, variable=variable, classes=classes)
        (folder / name / f"{name}_{split}.ts").write_text(ts_text(seqs, labels, classes, name))
    return folder / name / f"{name}_TRAIN.ts"
