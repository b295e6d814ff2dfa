"""The GPU tools on a machine without a GPU (as in CI): tools/gpu-check.sh and tools/sync-audit.py
say so in one line and exit 2; the check's summary reads a check's output folder (made up here, in
the files' real formats) and judges every target."""

import importlib.util
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from conftest import REPO

NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}


@pytest.mark.parametrize("command", [["bash", "tools/gpu-check.sh"],
                                     [sys.executable, "tools/sync-audit.py", "--data-dir", "."],
                                     [sys.executable, "tools/rnn-precision-probe.py"]])
def test_without_a_gpu_the_gpu_tools_say_so_and_exit_2(command):
    proc = subprocess.run(command, cwd=REPO, env=NO_GPU, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no CUDA device" in proc.stderr, proc.stderr


def check_output(folder: Path, graphed_lstm: float = 160_000, audit_on: int = 0) -> Path:
    """A check's output folder: the presets' results, bench.json, the probe's and the audits' logs."""
    for preset in ("seed-lstm", "seed-bilstm"):
        for graphs in ("off", "on"):
            (folder / f"{preset}-graphs-{graphs}").mkdir(parents=True)
            (folder / f"{preset}-graphs-{graphs}" / "results.json").write_text(
                json.dumps({"test_accuracy": 0.975, "train_samples_per_s": 120_000.0}))
    from dist_rnn.bench import CUDA_VARIANTS
    speeds = {"dist_rnn_graphed": graphed_lstm, "dist_rnn_graphed_b1000": 310_000, "bilstm_graphed": 95_000,
              "bilstm_graphed_b1000": 175_000}
    bench = {"steps": 300, "repeats": 2, "original_median": 8_000.0, "seconds_to_first_step": 3.1,
             "eval_samples_per_s": 400_000.0, "variants": {name: list(spec) for name, spec in CUDA_VARIANTS.items()},
             **{f"{name}_median": speeds.get(name, 30_000.0) for name in CUDA_VARIANTS}}
    (folder / "bench.json").write_text(json.dumps(bench))
    (folder / "probe-uni.log").write_text("uni cudagraph adam(fused,capt)   bs=  100 samples_per_s=   179341 "
                                          "ms_per_step=0.558\n   final loss 0.0812\n")
    (folder / "probe-bi.log").write_text("bi cudagraph adam(fused,capt)   bs=  100 samples_per_s=   103179 "
                                         "ms_per_step=0.969\n")
    for graphs, steady in (("off", 0), ("on", audit_on)):
        (folder / f"sync-audit-graphs-{graphs}.log").write_text(
            f"seed-lstm ...\nsync audit: {steady} syncs in the steady loop over 300 steps (target 0), {steady + 5} "
            "in all\n")
    (folder / "cuda-tests.log").write_text("21 passed in 97.10s\n")
    return folder


def summary(folder: Path, seconds: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/gpu_check_summary.py", str(folder), str(seconds), "0",
                           "NVIDIA H200 / torch 2.11"], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_the_gpu_check_summary_judges_every_target(tmp_path):
    passed = summary(check_output(tmp_path / "pass"))
    assert passed.returncode == 0 and passed.stdout.strip().endswith("result: PASS"), passed.stdout + passed.stderr
    for line in ("GPU check: NVIDIA H200 / torch 2.11, 300 s (target <= 360)", "cuda tests: 21 passed in 97.10s",
                 "seed-lstm graphed / probe's CUDA graph + fused capturable Adam (160,000 / 179,341): 0.89 "
                 "(target >= 0.85)", "seed-bilstm graphed, batch 1000, samples/s: 175,000 (target >= 170,000)",
                 "time to first step, s: 3.10 (target <= 5.00)",
                 "CUDA graphs on: sync audit: 0 syncs in the steady loop over 300 steps (target 0), 5 in all"):
        assert line in passed.stdout, passed.stdout
    failed = summary(check_output(tmp_path / "fail", graphed_lstm=140_000, audit_on=1), seconds=400)
    assert failed.returncode == 1, failed.stdout
    assert "(140,000 / 179,341): 0.78 (target >= 0.85, MISSED)" in failed.stdout
    assert "result: FAIL; missed: seed-lstm graphed / probe's" in failed.stdout
    assert "sync audit, graphs on; the check's time" in failed.stdout


def test_the_sync_audit_counts_the_steady_loop_only():
    spec = importlib.util.spec_from_file_location("sync_audit", REPO / "tools" / "sync-audit.py")
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)

    def stack(*frames: str) -> list:
        return [traceback.FrameSummary(f"/x/dist_rnn/{place.split(':')[0]}", 1, place.split(":")[1])
                for place in frames]

    assert audit.per_step(stack("train.py:train", "step.py:__call__", "step.py:_update"))
    assert audit.per_step(stack("train.py:train", "feeders.py:batches"))
    assert audit.per_step(stack("train.py:main", "train.py:train"))  # the loop's own body
    assert not audit.per_step(stack("train.py:_build", "step.py:__init__", "step.py:_record", "step.py:_update"))
    assert not audit.per_step(stack("train.py:_report", "distributed.py:global_mean"))
    assert not audit.per_step(stack("train.py:score", "evaluate.py:evaluate", "views.py:__call__"))
