#!/usr/bin/env bash
# Start a single-node SLURM cluster on loopback for the test suite (Debian packages
# slurmctld slurmd slurm-client munge; run as root).
#
#   tests/slurm/start_cluster.sh DIR
#
# Everything the cluster writes (slurm.conf, state, spool, logs, pid files) lives in DIR; the
# clients find the cluster through SLURM_CONF=DIR/slurm.conf (printed on the last line as
# `export SLURM_CONF=...`). munged is started first when none runs (its pid is recorded in
# DIR/munged.pid only when this script started it). tests/slurm/stop_cluster.sh DIR stops the
# daemons this script started and nothing else.
set -euo pipefail
DIR=$(realpath -m "${1:?usage: start_cluster.sh DIR}")
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
for exe in munged slurmctld slurmd sbatch scontrol sinfo; do
    command -v "$exe" >/dev/null || {
        echo "start_cluster.sh: '$exe' not found; install the Debian packages:" \
            "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge" >&2
        exit 3
    }
done

# --- munge (authentication) first ---------------------------------------------------------
if ! munge -n </dev/null >/dev/null 2>&1; then
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- munged
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
    pgrep -u munge -x munged -n >"$DIR/munged.pid"
fi
munge -n </dev/null | unmunge >/dev/null

# --- slurm.conf -------------------------------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
# two free TCP ports (controller, node daemon) so that clusters of parallel sessions coexist
read -r CTLD_PORT SLURMD_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)
cat >"$DIR/slurm.conf" <<CONF
ClusterName=benchtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=300
MaxArraySize=1001
SchedulerParameters=sched_interval=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$DIR/slurm.conf"

# --- daemons ---------------------------------------------------------------------------------
slurmctld -f "$SLURM_CONF" -i
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
slurmd -f "$SLURM_CONF"
for _ in $(seq 300); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1)
    [ "$state" = "idle" ] && break
    sleep 0.1
done
if [ "${state:-}" != "idle" ]; then
    echo "start_cluster.sh: node did not become idle (state '${state:-none}'); logs in $DIR/log" >&2
    tail -20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 4
fi
echo "export SLURM_CONF=$SLURM_CONF"
