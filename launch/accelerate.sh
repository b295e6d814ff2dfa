#!/usr/bin/env bash
# Train on one node with `accelerate launch` instead of torchrun (the same workers, the same flags).
#
#   launch/accelerate.sh --preset seed-lstm --data-dir /data/mnist
#   NPROC=4 MIXED_PRECISION=bf16 launch/accelerate.sh --preset seed-bilstm
#
# Every argument goes to `python -m dist_rnn.train`; --batch-size is the GLOBAL batch.
# ACCELERATE_CONFIG  accelerate config file (default: launch/accelerate_config.yaml, 2 processes)
# NPROC              processes, overriding the config file's num_processes
# MIXED_PRECISION    no | bf16 | fp16, overriding the config file (an explicit --precision wins over both)
# ACCELERATE         the accelerate command (default: accelerate)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
args=(--config_file "${ACCELERATE_CONFIG:-$here/accelerate_config.yaml}")
[ -n "${NPROC:-}" ] && args+=(--num_processes "$NPROC")
[ -n "${MIXED_PRECISION:-}" ] && args+=(--mixed_precision "$MIXED_PRECISION")
exec "${ACCELERATE:-accelerate}" launch "${args[@]}" -m dist_rnn.train "$@"
