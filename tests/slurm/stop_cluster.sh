#!/usr/bin/env bash
# Stop the daemons tests/slurm/start_cluster.sh DIR started (by their recorded pids only).
set -uo pipefail
DIR=$(realpath -m "${1:?usage: stop_cluster.sh DIR}")
export SLURM_CONF="$DIR/slurm.conf"
[ -f "$SLURM_CONF" ] && timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null
for name in slurmd slurmctld munged; do
    pidfile="$DIR/$name.pid"
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$pidfile"
done
exit 0
