#!/bin/bash
# A one-node Slurm cluster on localhost, for the e2e tests and for trying the sbatch scripts on one machine.
#
#   slurm/local_cluster.sh start     # installs Debian's slurm + munge if missing (as root), starts the daemons
#   export SLURM_CONF=${PREFIXRL_SLURM_DIR:-/tmp/prefixrl-slurm}/slurm.conf
#   sbatch ... ; sinfo ; squeue
#   slurm/local_cluster.sh stop      # stops slurmd, slurmctld and (if this script started it) munged, by PID
#
# Everything lives in $PREFIXRL_SLURM_DIR (default /tmp/prefixrl-slurm): slurm.conf, state, spool, logs and
# pidfiles; nothing is written to /etc. The config avoids cgroups (proctrack/linuxproc, task/none) and accounting
# (no slurmdbd; see slurm/bin/sacct). Steps and gotchas: ../shared/notes/platform.md, section 10.
set -euo pipefail

DIR=${PREFIXRL_SLURM_DIR:-/tmp/prefixrl-slurm}
CONF=$DIR/slurm.conf
MUNGE_PID=/run/munge/munged.pid

usage() { echo "usage: $0 start|stop   (state in \$PREFIXRL_SLURM_DIR, default /tmp/prefixrl-slurm)" >&2; exit 2; }

install_if_missing() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "error: Slurm is not installed and installing it needs root (apt-get)" >&2; exit 1
  fi
  echo "installing slurmctld slurmd slurm-client munge with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || { echo "error: apt-get update failed (no network or no apt sources?)" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2 \
    || { echo "error: apt-get install of slurm packages failed" >&2; exit 1; }
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  install_if_missing
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  # munge: runtime dir owned by munge, daemon run as the munge user; it forks and writes its pidfile.
  if ! alive "$MUNGE_PID"; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -f /etc/munge/munge.key ] || { echo "error: /etc/munge/munge.key missing (reinstall munge)" >&2; exit 1; }
    runuser -u munge -- munged
    touch "$DIR/munged.started-by-us"
  fi
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
  # StateSaveLocation records the ClusterName; a stale state dir from another config gives CLUSTER NAME MISMATCH.
  rm -rf "$DIR/state"/*
  cat > "$CONF" <<CONF
# written by slurm/local_cluster.sh
ClusterName=prefixrl-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$CONF
  alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  alive "$DIR/slurmd.pid" || slurmd -f "$CONF"
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "slurm up: slurmctld $(cat "$DIR/slurmctld.pid"), slurmd $(cat "$DIR/slurmd.pid"), munged" \
        "$(cat "$MUNGE_PID"); export SLURM_CONF=$CONF"
      return
    fi
    sleep 0.5
  done
  echo "error: the node did not become idle in 30 s; see $DIR/log/" >&2
  tail -n 20 "$DIR"/log/*.log >&2 || true
  exit 1
}

stop_pidfile() {
  local pidfile=$1 pid
  alive "$pidfile" || return 0
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "warning: PID $pid ($pidfile) did not exit after SIGTERM; sending SIGKILL" >&2
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  stop_pidfile "$DIR/slurmd.pid"
  stop_pidfile "$DIR/slurmctld.pid"
  if [ -f "$DIR/munged.started-by-us" ]; then
    stop_pidfile "$MUNGE_PID"
    rm -f "$DIR/munged.started-by-us"
  fi
  echo "slurm stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
