#!/usr/bin/env bash
# A real SLURM cluster on this one machine, for trying the dist_rnn job scripts and for CI.
#
#   slurm/local-cluster.sh start [--nodes N]   # install (Debian/Ubuntu, as root) and start; N emulated nodes
#   slurm/local-cluster.sh status
#   slurm/local-cluster.sh stop                # cancel jobs, stop only the daemons `start` started
#
# Everything lives in $DIST_RNN_SLURM_DIR (default /tmp/dist_rnn-slurm): slurm.conf, spool, logs,
# PID files. /etc/slurm/slurm.conf is linked to it when no other slurm.conf is there, so sbatch,
# squeue and scontrol work without SLURM_CONF. With --nodes N, N slurmd daemons share this host
# (node1..nodeN, each with cores/N CPUs and memory/N), so multi-node jobs run for real on loopback.
# The settings make a test cluster quick: the scheduler runs every 2 s, finished jobs are
# forgotten after 5 s, and a requeued job starts again after about 12 s.
set -euo pipefail

STATE=${DIST_RNN_SLURM_DIR:-/tmp/dist_rnn-slurm}
CONF=$STATE/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
MARK="# written by dist_rnn slurm/local-cluster.sh"

die() { echo "local-cluster.sh: error: $*" >&2; exit 2; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return
  [ "$(id -u)" = 0 ] || die "SLURM is not installed and installing it needs root"
  command -v apt-get >/dev/null || die "SLURM is not installed and this is not a Debian/Ubuntu machine (no apt-get)"
  echo "installing munge and SLURM (apt-get) ..."
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      munge slurmctld slurmd slurm-client >"$STATE/apt.log" 2>&1; then
    apt-get update -q >>"$STATE/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      munge slurmctld slurmd slurm-client >>"$STATE/apt.log" 2>&1 \
      || die "apt-get could not install munge slurmctld slurmd slurm-client (see $STATE/apt.log)"
  fi
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
  [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  if pid_alive /run/munge/munged.pid; then return; fi
  runuser -u munge -- munged --force
  cp /run/munge/munged.pid "$STATE/munged.pid"  # ours to stop
}

write_conf() {
  local nodes=$1 host cpus mem node_lines="" i
  host=$(hostname -s)
  if [ "$nodes" = 1 ]; then
    # The node line as slurmd sees the machine: a CPU or memory mismatch leaves the node INVAL.
    node_lines="$(slurmd -C | head -n1 | sed "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/")"
    NODE_NAMES=$host
  else
    cpus=$(( $(nproc) / nodes )); mem=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') / nodes ))
    [ "$cpus" -ge 1 ] || die "--nodes $nodes is more than this machine's $(nproc) cores"
    NODE_NAMES=""
    for i in $(seq 1 "$nodes"); do
      node_lines+="NodeName=node$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$cpus RealMemory=$mem"$'\n'
      NODE_NAMES+="${NODE_NAMES:+,}node$i"
      # Jobs resolve node names (MASTER_ADDR=the head node): point them at this machine.
      grep -qE "^127\.0\.0\.1[[:space:]].*\bnode$i\b" /etc/hosts || echo "127.0.0.1 node$i $MARK" >>/etc/hosts
    done
  fi
  cat >"$CONF" <<EOF
$MARK
ClusterName=dist-rnn-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d-%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=2
MinJobAge=5
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
$node_lines
PartitionName=debug Nodes=$NODE_NAMES Default=YES MaxTime=INFINITE State=UP
EOF
  echo "$NODE_NAMES" >"$STATE/nodes"
}

start() {
  local nodes=1
  while [ $# -gt 0 ]; do
    case $1 in
      --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
      --nodes=*) nodes=${1#*=}; shift ;;
      *) die "unknown option $1 (usage: start [--nodes N])" ;;
    esac
  done
  [[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive number, got $nodes"
  [ "$(id -u)" = 0 ] || die "start needs root (it runs slurmctld and slurmd as root)"
  if [ -f "$STATE/slurmctld.pid" ] && pid_alive "$STATE/slurmctld.pid"; then
    die "already running (slurm/local-cluster.sh stop first)"
  fi
  mkdir -p "$STATE"
  install_packages
  start_munge
  write_conf "$nodes"
  if [ -e "$ETC_CONF" ] && ! grep -q "$MARK" "$ETC_CONF" 2>/dev/null; then
    echo "note: $ETC_CONF belongs to another SLURM; use: export SLURM_CONF=$CONF"
  else
    mkdir -p /etc/slurm && ln -sfn "$CONF" "$ETC_CONF"
  fi
  rm -rf "$STATE/ctld" && mkdir -p "$STATE/ctld"
  slurmctld -f "$CONF"
  local name
  for name in ${NODE_NAMES//,/ }; do
    mkdir -p "$STATE/d-$name"
    if [ "$nodes" = 1 ]; then slurmd -f "$CONF"; else slurmd -f "$CONF" -N "$name"; fi
  done
  # Ready when every node is idle.
  local i
  for i in $(seq 1 60); do
    if [ "$(SLURM_CONF=$CONF sinfo -h -o '%t' 2>/dev/null | sort -u)" = "idle" ]; then
      echo "SLURM cluster up: nodes $NODE_NAMES (config $CONF)"
      return 0
    fi
    sleep 0.5
  done
  SLURM_CONF=$CONF sinfo >&2 || true
  die "nodes did not become idle; see $STATE/slurmctld.log and $STATE/slurmd-*.log"
}

stop() {
  [ -d "$STATE" ] || { echo "not running"; return 0; }
  if pid_alive "$STATE/slurmctld.pid"; then
    SLURM_CONF=$CONF scancel --full --user="$(id -un)" 2>/dev/null || true
    # slurmstepd outlives slurmd: give cancelled jobs a moment to end first.
    local i
    for i in $(seq 1 20); do
      [ -z "$(SLURM_CONF=$CONF squeue -h 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  local pidfile
  for pidfile in "$STATE"/slurmd-*.pid "$STATE/slurmctld.pid" "$STATE/munged.pid"; do
    [ -f "$pidfile" ] || continue
    if pid_alive "$pidfile"; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
    rm -f "$pidfile"
  done
  [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$CONF" ] && rm -f "$ETC_CONF"
  if grep -q "$MARK" /etc/hosts; then  # rewrite in place: /etc/hosts may be a bind mount
    grep -v "$MARK" /etc/hosts >"$STATE/hosts" && cat "$STATE/hosts" >/etc/hosts
  fi
  echo "SLURM cluster stopped"
}

status() {
  if [ -f "$STATE/slurmctld.pid" ] && pid_alive "$STATE/slurmctld.pid"; then
    SLURM_CONF=$CONF sinfo
    SLURM_CONF=$CONF squeue
  else
    echo "not running"
    return 1
  fi
}

case ${1:-} in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [--nodes N] | stop | status" >&2; exit 2 ;;
esac
