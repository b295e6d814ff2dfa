"""The benchmark command runs end to end (tiny sizes: figures from it are not checked, only produced)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import CPU_WITHOUT_BF16, REPO, cpu_runs_bf16_lstm, write_mnist


@pytest.mark.parametrize("cpu", ["this", "without-bf16"])
def test_bench_runs_and_writes_json(tmp_path, cpu):
    """On this CPU, and as on one without bf16 (whose variant is left out, saying why, the rest measured)."""
    data = write_mnist(tmp_path / "data", n_train=1000, n_test=100)
    out = tmp_path / "bench.json"
    env = {**os.environ, **(CPU_WITHOUT_BF16 if cpu == "without-bf16" else {})}
    proc = subprocess.run([sys.executable, "-m", "dist_rnn.bench", "--data-dir", str(data), "--steps", "5",
                           "--repeats", "1", "--no-sweep", "--out", str(out), "--device", "cpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["original_median"] > 0 and figures["dist_rnn_median"] > 0
    assert figures["ratio_dist_rnn_vs_original"] == figures["dist_rnn_median"] / figures["original_median"]
    if cpu == "this" and cpu_runs_bf16_lstm():
        assert figures["ratio_dist_rnn_bf16_vs_original"] == \
            figures["dist_rnn_bf16_median"] / figures["original_median"]
        assert figures["skipped_variants"] == {}
    else:
        assert "dist_rnn_bf16_median" not in figures and "dist_rnn_bf16" not in figures["variants"]
        assert "this CPU cannot run the LSTM in bfloat16" in figures["skipped_variants"]["dist_rnn_bf16"]
        assert "not measured: dist_rnn_bf16: precision=bf16: this CPU cannot" in proc.stdout
    assert 0 < figures["original_loader_share_of_step"] < 1
    assert "dist_rnn seed-lstm, batch 100, fp32: samples/s (median), ratio to the original" in proc.stdout
    assert figures["seconds_to_first_step"] > 0 and figures["variants"]["dist_rnn"] == ["seed-lstm", "fp32", "off", 100]
