#!/usr/bin/env bash
# A real single-node Slurm on this machine (Debian's munge, slurmctld, slurmd), for the tests of
# `orchestrate.py submit --slurm` and for trying the cluster path on a workstation. Root; idempotent.
#
#   scripts/slurm_local.sh          install (apt) if needed, configure for this host, start munge + slurmctld + slurmd
#   scripts/slurm_local.sh stop     stop the daemons
#
# One node (this host, all its CPUs and memory), one partition "debug"; no cgroups, no accounting database (job
# states come from squeue/scontrol, which keep finished jobs for an hour: MinJobAge).
set -euo pipefail

if [ "${1:-}" = "stop" ]; then
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x munged || true
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "slurm_local.sh: must run as root (it installs packages and starts system daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
    apt-get -o DPkg::Lock::Timeout=300 install -y -q munge slurmctld slurmd slurm-client \
        >/dev/null
fi

host=$(hostname -s)
conf=/etc/slurm/slurm.conf
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
# what slurmd sees on this host (CPUs, sockets, cores, memory), so the node is never drained for a mismatch
node=$(slurmd -C | head -1)
cat > "$conf" <<EOF
# written by scripts/slurm_local.sh: a single-node cluster on $host
ClusterName=slm-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
MinJobAge=3600
KillWait=30
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

# munge: one key for the "cluster" (this host), daemon as the munge user
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null || \
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key /run/munge
chmod 400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
fi

# (re)start the daemons with this configuration; -c: a clean state (no jobs of an earlier start)
pkill -x slurmd || true
pkill -x slurmctld || true
sleep 1
slurmctld -c
slurmd
for _ in $(seq 1 60); do
    if sinfo -h -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "slurm_local.sh: the node did not come up; the logs:" >&2
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2
exit 1
