#!/bin/bash
# A one-node SLURM cluster on this machine, for trying train.sbatch and for tests/test_slurm.py.
#
#   scripts/slurm/local_cluster.sh start DIR [CTLD_PORT SLURMD_PORT]   # then: export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm/local_cluster.sh stop DIR
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root (slurmd starts job steps
# as the submitting user). Everything lives in DIR: its own munge key and socket, state, logs; no
# cgroups (proctrack/linuxproc), nothing in /etc is read or changed.
set -euo pipefail
command=$1
dir=$(realpath -m "$2")
# munged wants every folder above its socket open to all (pytest's temporary folders are not): /tmp
socket=/tmp/munge-$(echo "$dir" | md5sum | cut -c1-12).socket

if [[ $command == stop ]]; then
    export SLURM_CONF=$dir/slurm.conf
    # SIGKILL every job and wait until they are gone: a daemon stopped first would leave them running.
    scancel --full --signal=KILL --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 20); do
        [[ -z $(squeue --noheader 2>/dev/null) ]] && break
        sleep 0.5
    done
    for pid_file in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/private/munged.pid"; do
        [[ -f $pid_file ]] && kill "$(cat "$pid_file")" 2>/dev/null || true
    done
    rm -f "$socket" "$socket.lock"
    exit 0
fi

ctld_port=${3:-16817}
slurmd_port=${4:-16818}
node=$(hostname -s)
# nproc answers OMP_NUM_THREADS when it is set: OMP_NUM_THREADS=1 gave the node 1 CPU, so one job ran at a time
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
mkdir -p "$dir/state" "$dir/spool"
mkdir -p -m 700 "$dir/private"
[[ -f $dir/private/munge.key ]] || (umask 077 && head -c 1024 /dev/urandom > "$dir/private/munge.key")

cat > "$dir/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$socket,cred_expire=5
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
# schedule every second: a requeued job starts again within seconds (defaults: 60 s and 30 s)
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
KillWait=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF

munged --socket="$socket" --key-file="$dir/private/munge.key" --pid-file="$dir/private/munged.pid" \
    --log-file="$dir/private/munged.log" --seed-file="$dir/private/munge.seed"
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
    [[ $(sinfo --noheader --format=%t 2>/dev/null) == idle ]] && exit 0
    sleep 0.5
done
echo "the local SLURM cluster did not come up within 30 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
exit 1
