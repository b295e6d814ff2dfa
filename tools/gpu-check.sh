#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, run the GPU tests (pytest -m cuda), train both
# presets on the GPU (eager, then with the step in CUDA graphs), run the benchmark on the GPU and
# the reference probe ($GRAPH_PROBE, default ../shared/gpu/graph_probe.py: the ceiling a bare loop
# reaches, measured in the same job), and print one summary. About 6-7 minutes on one H100/H200. It installs nothing: it needs torch (CUDA build), torchvision, tqdm, pyyaml,
# matplotlib, pillow and pytest (pytest-xdist, where present, runs the tests 4 at a time); wandb,
# accelerate and tensorboard may be missing (their tests are skipped). The whole suite on a GPU
# machine: `python -m pytest -n 8` (the CPU tests say --device cpu and run there as everywhere).
#
#   tools/gpu-check.sh [MNIST_DIR]      # default: $DIST_RNN_DATA, else ../shared/data/mnist
#
# Logs, results and bench.json go to $GPU_CHECK_OUT (default: gpu-check/). Exit status 0 only when
# every step passed; without a GPU it says so and exits 2.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # works from a plain checkout, installed or not
export PYTHONUNBUFFERED=1
OUT=${GPU_CHECK_OUT:-gpu-check}
DATA=${1:-${DIST_RNN_DATA:-../shared/data/mnist}}
mkdir -p "$OUT"
rm -rf "$OUT/bench.json" "$OUT"/seed-* "$OUT"/*.log  # no figures from an earlier check
PROBE=${GRAPH_PROBE:-../shared/gpu/graph_probe.py}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu-check: no CUDA device visible to torch: nothing to check" >&2
  exit 2
fi
if [ -d "$DATA" ]; then
  DIST_RNN_DATA=$(cd "$DATA" && pwd)
  export DIST_RNN_DATA
else
  echo "gpu-check: no MNIST directory at $DATA: the presets, the bench and the real-data tests are skipped" >&2
  unset DIST_RNN_DATA
fi
start=$(date +%s)
status=0

step() {  # step NAME TIMEOUT_S COMMAND...: run it with its output in $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "[$(( $(date +%s) - start )) s] $name ..."
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "  $name FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ", past its $limit s")): see $OUT/$name.log"
    status=1
  fi
}

if [ -n "${DIST_RNN_DATA:-}" ]; then
  for preset in seed-lstm seed-bilstm; do
    for graphs in off on; do
      step "$preset-graphs-$graphs" 300 "$PYTHON" -m dist_rnn.train --preset "$preset" --device cuda \
        --data-dir "$DIST_RNN_DATA" --out-dir "$OUT/$preset-graphs-$graphs" --cuda-graphs "$graphs"
    done
  done
  step bench 420 "$PYTHON" -m dist_rnn.bench --device cuda --data-dir "$DIST_RNN_DATA" --steps 300 --repeats 3 \
    --out "$OUT/bench.json"
  if [ -f "$PROBE" ]; then
    for model in uni bi; do
      step "probe-$model" 180 env MNIST="$DIST_RNN_DATA" "$PYTHON" "$PROBE" "$model" 600
    done
  fi
fi
parallel=()
"$PYTHON" -c 'import xdist' 2>/dev/null && parallel=(-n 4)
step cuda-tests 540 "$PYTHON" -m pytest -m cuda -p no:cacheprovider -q "${parallel[@]}" tests/

"$PYTHON" - "$OUT" "$(( $(date +%s) - start ))" "$status" <<'EOF' || status=1
import json, re, sys
from pathlib import Path
import torch

out, seconds, status = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print(f"\nGPU check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {seconds} s")
tests = (out / "cuda-tests.log").read_text().strip().splitlines() if (out / "cuda-tests.log").exists() else []
print(f"  cuda tests: {tests[-1] if tests else 'no output'}")
for preset in ("seed-lstm", "seed-bilstm"):
    for graphs in ("off", "on"):
        path = out / f"{preset}-graphs-{graphs}" / "results.json"
        if path.exists():
            r = json.loads(path.read_text())
            print(f"  {preset} fp32, CUDA graphs {graphs}: test accuracy {r['test_accuracy']:.4f} on "
                  f"{r['test_samples']}, {r['train_samples_per_s']:.0f} train samples/s "
                  f"({r['train_seconds']:.1f} s training)")
bench = out / "bench.json"
if bench.exists():
    b = json.loads(bench.read_text())
    print(f"  bench (seed-lstm, {b['steps']} steps x {b['repeats']}, steady samples/s): original "
          f"{b['original_median']:.0f}; " + ", ".join(f"{name} {b[name + '_median']:.0f} "
                                                      f"({b['ratio_' + name + '_vs_original']:.2f}x)"
                                                      for name in b["variants"])
          + f"; first step {b['seconds_to_first_step']:.2f} s, eval {b['eval_samples_per_s']:.0f} samples/s")
for model in ("uni", "bi"):
    log = out / f"probe-{model}.log"
    if log.exists():
        for line in log.read_text().splitlines():
            if "samples_per_s" in line:
                print("  probe " + " ".join(line.split()))
print(f"  result: {'PASS' if status == 0 else 'FAIL'}")
EOF
exit "$status"
