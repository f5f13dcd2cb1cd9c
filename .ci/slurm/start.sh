#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian's slurm-wlm 22.05 + munge, no systemd),
# for running the workflow through profiles/slurm: partitions cpu (default) and gpu on the
# local node (no GPUs configured), no accounting database (sacct cannot work: use
# slurm-status-command squeue; MinJobAge is 300 s). Needs root. Installs the packages if
# missing; a cluster that already answers is left as it is. Prints the install and start
# times; stop it with stop.sh.
set -euo pipefail

STATE=${CIRCUITFLOW_SLURM_STATE:-/var/lib/circuitflow-slurm}
CONF=/etc/slurm/slurm.conf # srun inside a job reads this path; SLURM_CONF elsewhere breaks it

if [ "$(id -u)" != 0 ]; then
    echo "slurm/start.sh: needs root (apt-get install and the daemons)" >&2
    exit 1
fi

wait_for() { # wait_for SECONDS COMMAND...: poll every 0.2 s until COMMAND succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then return 1; fi
        sleep 0.2
    done
}

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { print b - a }'; }

node_idle() { [ "$(sinfo -h -N -o %t 2>/dev/null | sort -u)" = idle ]; }

if command -v scontrol >/dev/null && [ -f "$CONF" ] && scontrol ping >/dev/null 2>&1 && node_idle; then
    echo "slurm: already up"
    exit 0
fi
if command -v scontrol >/dev/null && scontrol ping >/dev/null 2>&1; then
    bash "$(dirname "$0")/stop.sh" >/dev/null # up but its node is not idle: start afresh
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
    ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    start=$(date +%s.%N)
    export DEBIAN_FRONTEND=noninteractive
    packages=(slurmctld slurmd slurm-client munge)
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    }
    printf 'slurm: installed in %.1fs\n' "$(elapsed "$start")"
fi

start=$(date +%s.%N)
mkdir -p "$STATE"/{ctld,slurmd,log} /etc/slurm /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged
    if ! wait_for 10 sh -c 'munge -n </dev/null | unmunge'; then
        echo "slurm/start.sh: munged does not answer after 10 s (log: /var/log/munge/)" >&2
        exit 1
    fi
fi

host=$(hostname -s)
# the node as slurmd sees it (CPUs, sockets, cores, threads, RealMemory), so it is not drained
# for a mismatch; memory is a consumable resource, so DefMemPerCPU keeps one srun from
# claiming the whole node
node=$(slurmd -C | head -n 1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
real_mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
cat >"$CONF" <<EOF
# written by .ci/slurm/start.sh: a single-node cluster on $host
ClusterName=circuitflow
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((real_mem / (cpus * 2)))
ReturnToService=2
MinJobAge=300
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
$node State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF

slurmctld -c # fresh state: no jobs or node states (e.g. drained) kept from an earlier start
if ! wait_for 20 scontrol ping; then
    echo "slurm/start.sh: slurmctld does not answer after 20 s (log: $STATE/log/slurmctld.log)" >&2
    exit 1
fi
slurmd
if ! wait_for 30 node_idle; then
    echo "slurm/start.sh: node $host is not idle after 30 s: $(sinfo -h -N -o '%t %E')" \
        "(logs: $STATE/log/)" >&2
    exit 1
fi
printf 'slurm: up in %.1fs (%s CPUs, %s MB, partitions cpu gpu)\n' \
    "$(elapsed "$start")" "$cpus" "$real_mem"
