#!/usr/bin/env bash
# Start a one-node Slurm (munged + slurmctld + slurmd) on this machine, for the `slow` Slurm
# end-to-end test (tests/test_slurm_e2e.py). Needs root and Debian's slurm-wlm and munge
# packages (`.ci/run` installs them). Idempotent: exits at once when Slurm already answers.
#
# The settings that make slurmctld/slurmd run as root inside a container: SlurmdUser=root,
# ProctrackType=proctrack/linuxproc and TaskPlugin=task/none (no cgroups),
# JobAcctGatherType=jobacct_gather/none, ReturnToService=2 (the node comes back by itself
# after a restart), JobRequeue=1 (flowctl's jobs requeue themselves on the preemption signal).
# Pass --restart to rewrite slurm.conf and restart the daemons.
set -euo pipefail

CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
NODE=$(hostname -s)
if [ "${1:-}" = "--restart" ]; then
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do  # the daemons this script started
    if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  for _ in $(seq 1 50); do
    pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
    sleep 0.2
  done
fi
if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP \
   && sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
  echo "slurm already running ($(sinfo -h -o '%P %T %N' | head -1))"
  exit 0
fi
for tool in munged slurmctld slurmd; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; apt-get install -y slurm-wlm munge" >&2; exit 2; }
done

mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge /var/log/slurm \
         /var/spool/slurmctld /var/spool/slurmd "$(dirname "$CONF")"
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R root:root /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  munged --force
fi

# CPUs and memory as slurmd sees them, so the node registers without a mismatch.
read -r CPUS MEMORY < <(slurmd -C | awk '/^NodeName/ {
  for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  print v["CPUs"], v["RealMemory"] }')
cat > "$CONF" <<CONF
# Written by .ci/start_slurm.sh: one node ($NODE), for flowctl's tests.
ClusterName=flowctl-ci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
JobRequeue=1
# A requeued job may start again after the credential of its last run expires (default
# 120 s; 5 s is Slurm's least) and then waits for the next backfill pass (default every
# 30 s) or main scheduling pass (60 s): both every 1 s here. Both keep the requeue test short.
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=600
KillWait=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
    echo "slurm up: $(sinfo -h -o '%P %T %N %c CPUs')"
    exit 0
  fi
  sleep 0.5
done
echo "error: slurm did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
