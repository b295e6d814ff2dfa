# Sourced by launch/multi_node.sh and slurm/job.sh, on each node of a job of several nodes.
#
# gloo (the backend of CPU jobs, and on GPUs of the stop agreement's side group beside NCCL) binds
# to the address this node's hostname resolves to. Where that is a loopback address (Debian's
# "127.0.1.1 <hostname>" line in /etc/hosts, say), the other nodes cannot reach it and the job
# hangs at its first collective. GLOO_SOCKET_IFNAME names the interface instead: unless it is set
# already, gloo_socket_ifname sets it to the interface this node reaches the rendezvous host on
# (on that host itself: the interface holding its address; where the name resolves to a loopback
# address: the interface of the default route). Set it yourself (and NCCL_SOCKET_IFNAME for NCCL)
# where the nodes talk over another network than those.
gloo_socket_ifname() {  # RENDEZVOUS_HOST
  local addr dev
  [ -n "${GLOO_SOCKET_IFNAME:-}" ] && return 0
  command -v ip >/dev/null 2>&1 || return 0
  addr=$(getent ahostsv4 "$1" 2>/dev/null | awk 'NR == 1 {print $1}') || true
  [ -n "$addr" ] || return 0
  case $addr in
    127.*)  # the host's own name resolved to loopback (/etc/hosts): gloo would bind there, where no
            # other node can reach it; the interface of the default route is the one that leaves the node
      dev=$(ip -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p') || true ;;
    *)
      dev=$(ip -o -4 addr show to "$addr" 2>/dev/null | awk 'NR == 1 {print $2}') || true
      [ -n "$dev" ] || dev=$(ip -o route get "$addr" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p') || true ;;
  esac
  if [ -n "$dev" ]; then export GLOO_SOCKET_IFNAME=$dev; fi
  return 0
}
