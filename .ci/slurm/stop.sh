#!/usr/bin/env bash
# Stops the cluster that start.sh started: cancels its jobs, then ends slurmd, slurmctld and
# munged by the ids in their pid files, and moves the slurm.conf that start.sh wrote aside:
# with a slurm.conf and no controller, every `scontrol` waits ~9 s, and the Slurm executor
# plugin runs one when Snakemake starts. Leaves the packages and the logs.
set -uo pipefail

STATE=${CIRCUITFLOW_SLURM_STATE:-/var/lib/circuitflow-slurm}

if command -v scancel >/dev/null && scontrol ping >/dev/null 2>&1; then
    scancel --full --state=PENDING,RUNNING,SUSPENDED "--user=$(id -un)" 2>/dev/null
    for _ in $(seq 50); do
        [ -z "$(squeue -h -t PENDING,RUNNING,COMPLETING 2>/dev/null)" ] && break
        sleep 0.2
    done
fi

stop_pid() { # stop_pid PIDFILE: TERM, then KILL after 5 s
    local pid
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid"
    for _ in $(seq 25); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null
}

stop_pid "$STATE/slurmd.pid"
stop_pid "$STATE/slurmctld.pid"
stop_pid /run/munge/munged.pid
CONF=/etc/slurm/slurm.conf
if [ -f "$CONF" ] && head -n 1 "$CONF" | grep -q "written by .ci/slurm/start.sh"; then
    mv "$CONF" "$CONF.circuitflow-stopped"
fi
echo "slurm: stopped"
