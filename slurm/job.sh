#!/usr/bin/env bash
# The launch logic shared by every dist_rnn SLURM job script (train.sbatch, multinode.sbatch,
# train-cpu.sbatch differ only in their #SBATCH headers and exec this). It runs as the job's batch
# shell, on the first node of the allocation:
#
#  1. logs SLURM_JOB_ID and SLURM_RESTART_COUNT (0 on the first run, 1 after the first requeue, ...);
#  2. starts one torchrun per node with `srun`, meeting through torchrun's c10d rendezvous on the
#     first node, rendezvous id = the job id; every run starts with --resume auto, so a requeued
#     job continues from its newest checkpoint (arguments of sbatch after the script come last and
#     override anything, e.g. `sbatch slurm/train.sbatch --preset seed-bilstm --out-dir runs/x`);
#  3. on USR1 (what `#SBATCH --signal=B:USR1@120` sends before the time limit, and what
#     `scancel --batch --signal=USR1` sends to preempt) or TERM: sends USR1 to the job step's
#     processes (torchrun ignores it; the workers agree on a step, rank 0 checkpoints it, all exit
#     0); once the step has ended the job requeues itself (`scontrol requeue`), which starts it
#     again later, and it resumes from that checkpoint.
#
# Environment: PYTHON (interpreter with dist_rnn installed; default python3, from the submitting
# shell's PATH, which sbatch passes on), NPROC (processes per node; default: the node's GPUs, else 1),
# MASTER_PORT (rendezvous port; default derived from the job id), MAX_RESTARTS (torchrun restarts
# after a worker dies, default 3), DIST_RNN_DATA (the data directory), GLOO_SOCKET_IFNAME (several
# nodes: the network interface gloo binds to; default: the one towards the first node).
set -uo pipefail

echo "SLURM_JOB_ID=${SLURM_JOB_ID} SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}"

PYTHON=${PYTHON:-python3}
NNODES=${SLURM_JOB_NUM_NODES:-1}
if [ -z "${NPROC:-}" ]; then
  if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then NPROC=$SLURM_GPUS_ON_NODE
  else NPROC=$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))'); fi
fi
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
# A torchrun that restarts its workers must not hand them the old group's store (pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
# CPU jobs: give each process its share of the task's cores (torchrun would set 1).
if [ -n "${SLURM_CPUS_PER_TASK:-}" ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK / NPROC > 0 ? SLURM_CPUS_PER_TASK / NPROC : 1 ))
fi
echo "nodes=$NNODES processes/node=$NPROC rendezvous=$HEAD_NODE:$MASTER_PORT python=$PYTHON"
# Which job script and which dist_rnn (a checkout, or an installed package) the job runs.
echo "job script: $0; dist_rnn: $("$PYTHON" -c 'import dist_rnn; print(dist_rnn.__file__)' 2>&1 | tail -n 1)"

# One task per node; each runs torchrun. Only the first node hosts the rendezvous store
# (is_host), which does not depend on how node names resolve.
# With several nodes each sets GLOO_SOCKET_IFNAME (unless given) to its interface towards the
# first node: see launch/gloo-ifname.sh.
srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0 \
  bash -c 'trap "" USR1
           if [ "$1" -gt 1 ]; then
             . "$4"; gloo_socket_ifname "${3%:*}"
             echo "node ${SLURMD_NODENAME:-$(hostname)}: GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-unset}"
           fi
           exec "$0" -m torch.distributed.run --nnodes="$1" --nproc_per_node="$2" \
             --rdzv-backend=c10d --rdzv-endpoint="$3" --rdzv-id="$SLURM_JOB_ID" \
             --max-restarts="${MAX_RESTARTS:-3}" \
             --rdzv-conf="is_host=$([ "$SLURM_NODEID" = 0 ] && echo 1 || echo 0)" \
             -m dist_rnn.train --resume auto "${@:5}"' \
  "$PYTHON" "$NNODES" "$NPROC" "$HEAD_NODE:$MASTER_PORT" "$(cd "$(dirname "$0")/.." && pwd)/launch/gloo-ifname.sh" \
  "$@" &
child=$!

preempted=0
on_signal() {
  [ "$preempted" = 1 ] && return  # once is enough
  preempted=1
  echo "$(date '+%F %T') received $1: asking the job step to checkpoint and stop"
  # USR1 to every process of the job's steps: torchrun ignores it (set above, kept across exec),
  # the workers take it as "checkpoint and exit": they agree on a step, rank 0 saves it, all exit
  # 0, and torchrun ends normally. Not SIGTERM: SLURM treats a SIGTERM'd step as cancelled, and
  # torchrun would stop waiting for its workers, so the step's end could kill them mid-save
  # (seen in CI once); not srun, which kills the step when signalled.
  scancel --signal=USR1 "$SLURM_JOB_ID"
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# bash runs a trap only between commands: `wait` returns early when one fires, so wait again
# until the step has really ended.
status=0
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  status=$?
done

if [ "$preempted" = 1 ]; then
  echo "$(date '+%F %T') requeueing job $SLURM_JOB_ID (it resumes from its newest checkpoint)"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$status"
