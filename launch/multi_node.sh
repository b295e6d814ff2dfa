#!/usr/bin/env bash
# Train on several nodes with torchrun: run this same command once on EVERY node.
#
#   NNODES=2 MASTER_ADDR=node01 MASTER_PORT=29500 RUN_ID=exp42 \
#     launch/multi_node.sh --preset seed-bilstm --data-dir /data/mnist
#
# The nodes meet through torchrun's c10d rendezvous hosted at MASTER_ADDR:MASTER_PORT (a host all
# nodes can reach; the first node to arrive serves it). Node ranks are assigned by the rendezvous.
# Every argument goes to `python -m dist_rnn.train`; --batch-size is the GLOBAL batch over all
# NNODES x NPROC processes. Give the same --out-dir on every node (a shared file system): only
# global rank 0 writes there.
# NNODES       nodes in the job (required)
# MASTER_ADDR  rendezvous host (required);  MASTER_PORT  its port (default 29500)
# RUN_ID       the same on every node, unique per job (default: dist_rnn)
# NPROC        processes per node (default: the number of visible GPUs, at least 1)
# MAX_RESTARTS times torchrun restarts the workers after one dies (default 3; torchrun's own default
#              is 0). Each restart resumes from the newest checkpoint (--resume auto).
# PYTHON       interpreter whose torch to use (default: python3)
# GLOO_SOCKET_IFNAME  the network interface gloo binds to (default: this node's towards MASTER_ADDR;
#              see launch/gloo-ifname.sh); NCCL_SOCKET_IFNAME likewise for NCCL, where needed
set -euo pipefail
: "${NNODES:?set NNODES to the number of nodes}"
: "${MASTER_ADDR:?set MASTER_ADDR to the rendezvous host}"
PYTHON=${PYTHON:-python3}
NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
# Restarts need a fresh store per attempt: restart counts differ between nodes, so per-attempt key
# prefixes cannot work there (pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
# gloo's interface (unless GLOO_SOCKET_IFNAME is set): the one towards the rendezvous host
. "$(dirname "$0")/gloo-ifname.sh"
gloo_socket_ifname "$MASTER_ADDR"
echo "$(hostname): GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-unset}"
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$NPROC" \
  --max-restarts="${MAX_RESTARTS:-3}" \
  --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id="${RUN_ID:-dist_rnn}" \
  -m dist_rnn.train "$@"
