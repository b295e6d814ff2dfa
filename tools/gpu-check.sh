#!/usr/bin/env bash
# The GPU check, the one GPU job: on a machine with a CUDA GPU, train both presets on the GPU (eager,
# then with the step in CUDA graphs), run the benchmark (both presets, fp32/bf16/fp16, graphed,
# batch 1000), the reference probe ($GRAPH_PROBE, default ../shared/gpu/graph_probe.py: the ceiling
# a bare loop reaches, measured in the same job), which precision makes cuDNN's LSTM fastest
# (tools/rnn-precision-probe.py), a host-sync audit of the training loop (tools/sync-audit.py,
# eager and graphed), and the GPU tests (pytest -m cuda); then print one
# summary with every figure the GPU targets name, each against its target. Planned to fit 6 minutes
# on one H100/H200 (each step has its own time limit below). It installs nothing: it needs torch
# (CUDA build), torchvision, tqdm, pyyaml, matplotlib, pillow and pytest; with pytest-xdist the tests
# run 4 at a time, without it in 4 pytest processes of their own; wandb, accelerate and tensorboard
# may be missing (their tests are skipped). The whole suite on a GPU machine: `python -m pytest -n 8`.
#
#   tools/gpu-check.sh [MNIST_DIR]      # default: $DIST_RNN_DATA, else ../shared/data/mnist
#
# Logs, results and bench.json go to $GPU_CHECK_OUT (default: gpu-check/), the summary also to
# summary.txt there. Exit status 0 only when every step passed and every target was met; without a
# GPU it says so and exits 2.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # works from a plain checkout, installed or not
export PYTHONUNBUFFERED=1
OUT=${GPU_CHECK_OUT:-gpu-check}
DATA=${1:-${DIST_RNN_DATA:-../shared/data/mnist}}
PROBE=${GRAPH_PROBE:-../shared/gpu/graph_probe.py}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu-check: no CUDA device visible to torch: nothing to check" >&2
  exit 2
fi
mkdir -p "$OUT"
rm -rf "$OUT/bench.json" "$OUT"/seed-* "$OUT"/*.log "$OUT/summary.txt"  # no figures from an earlier check
if [ -d "$DATA" ]; then
  DIST_RNN_DATA=$(cd "$DATA" && pwd)
  export DIST_RNN_DATA
else
  echo "gpu-check: no MNIST directory at $DATA: the presets, the bench, the probe and the audit are skipped" >&2
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

cuda_tests() {  # the GPU tests: 4 at a time through pytest-xdist, or in 4 pytest processes without it
  # (--dist load: pyproject's loadfile would keep test_cuda.py's tests in one worker)
  if "$PYTHON" -c 'import xdist' 2>/dev/null; then
    "$PYTHON" -m pytest -m cuda -p no:cacheprovider -q -n 4 --dist load tests/
    return
  fi
  # (-o addopts=: pyproject's addopts ask for xdist's -n)
  local ids rc=0 k shard pids=()
  if ! ids=$("$PYTHON" -m pytest -o addopts= -m cuda -p no:cacheprovider -q --collect-only tests/); then
    echo "$ids"
    echo "collecting the cuda tests failed"
    return 1
  fi
  ids=$(echo "$ids" | grep '::' || true)
  [ -n "$ids" ] || { echo "no cuda tests collected"; return 1; }
  for k in 0 1 2 3; do
    shard=$(echo "$ids" | awk -v k="$k" 'NR % 4 == k')
    [ -n "$shard" ] || continue
    # shellcheck disable=SC2086  # one argument per test id
    "$PYTHON" -m pytest -o addopts= -m cuda -p no:cacheprovider -q $shard >"$OUT/cuda-tests-$k.log" 2>&1 &
    pids+=($!)
  done
  for k in "${!pids[@]}"; do wait "${pids[$k]}" || rc=1; done
  tail -q -n 1 "$OUT"/cuda-tests-?.log
  return "$rc"
}

if [ -n "${DIST_RNN_DATA:-}" ]; then
  for preset in seed-lstm seed-bilstm; do
    for graphs in off on; do
      step "$preset-graphs-$graphs" 120 "$PYTHON" -m dist_rnn.train --preset "$preset" --device cuda \
        --data-dir "$DIST_RNN_DATA" --out-dir "$OUT/$preset-graphs-$graphs" --cuda-graphs "$graphs"
    done
  done
  step bench 150 "$PYTHON" -m dist_rnn.bench --device cuda --data-dir "$DIST_RNN_DATA" --steps 300 --repeats 2 \
    --out "$OUT/bench.json"
  if [ -f "$PROBE" ]; then
    for model in uni bi; do
      step "probe-$model" 60 env MNIST="$DIST_RNN_DATA" "$PYTHON" "$PROBE" "$model" 600
    done
  fi
  step rnn-precision 60 "$PYTHON" tools/rnn-precision-probe.py --steps 300
  for graphs in off on; do
    step "sync-audit-graphs-$graphs" 60 "$PYTHON" tools/sync-audit.py --data-dir "$DIST_RNN_DATA" --steps 300 \
      --cuda-graphs "$graphs"
  done
fi
export PYTHON OUT
step cuda-tests 240 bash -c "$(declare -f cuda_tests); cuda_tests"

gpu=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0), "/ torch", torch.__version__)')
"$PYTHON" tools/gpu_check_summary.py "$OUT" "$(( $(date +%s) - start ))" "$status" "$gpu" | tee "$OUT/summary.txt"
summary=${PIPESTATUS[0]}
[ "$summary" -eq 0 ] || status=1
exit "$status"
