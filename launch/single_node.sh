#!/usr/bin/env bash
# Train on one node with torchrun: one process per GPU (or NPROC processes on CPU).
#
#   launch/single_node.sh --preset seed-bilstm --data-dir /data/mnist
#   NPROC=2 launch/single_node.sh --preset seed-lstm --device cpu
#
# Every argument goes to `python -m dist_rnn.train`. --batch-size is the GLOBAL batch: each of the
# NPROC processes takes batch_size / NPROC samples per step.
# NPROC         processes (default: the number of visible GPUs, at least 1)
# MAX_RESTARTS  times torchrun restarts the workers after one dies (default 3; torchrun's own
#               default is 0: without --max-restarts a dead worker ends the run). Each restart
#               resumes from the newest checkpoint (--resume auto is dist_rnn's default).
# PYTHON        interpreter whose torch to use (default: python3)
set -euo pipefail
PYTHON=${PYTHON:-python3}
NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
# A restarted worker group must not read the dead group's keys from torchrun's store (pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
# --standalone: a private c10d rendezvous on a free local port, so two jobs on one node never collide.
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
  --max-restarts="${MAX_RESTARTS:-3}" -m dist_rnn.train "$@"
