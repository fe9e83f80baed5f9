#!/usr/bin/env bash
# A real one-node Slurm cluster for the tests and CI: Debian's slurmctld, slurmd and munge.
#
#   scripts/ci/slurm.sh install        apt-get the packages (once; idempotent)
#   scripts/ci/slurm.sh start DIR      write the configuration, start munged, slurmctld, slurmd with their PIDs
#                                      in DIR, wait until the node is idle; prints the env line the tests need
#   scripts/ci/slurm.sh stop DIR       stop the daemons by their recorded PIDs, remove the network namespace
#
# slurmctld and slurmd have no listen-address option (they bind 0.0.0.0:6817/6818), so they run in a private
# network namespace `mmbslurm` that has only loopback and an unrouted veth address: nothing outside this
# machine can reach them. Slurm's clients (sbatch, squeue, scontrol, scancel) must enter that namespace too;
# `mmb` does so when MMB_SLURM_WRAP is set. The configuration is DIR/slurm.conf (nothing is written under
# /etc), which Slurm's commands find through SLURM_CONF. `start` writes both variables to DIR/env:
#   . DIR/env && cargo test --locked --test slurm
# Must run as root (it creates the namespace and runs munged as the munge user).
set -euo pipefail

NS=mmbslurm

die() { echo "slurm.sh: $*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        echo "slurm.sh: slurmctld, slurmd, slurm-client and munge are installed"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge iproute2 util-linux
}

netns_up() {
    if [ ! -e "/run/netns/$NS" ]; then
        ip netns add "$NS"
        ip -n "$NS" link set lo up
        # glibc's getaddrinfo(AI_ADDRCONFIG) fails with loopback alone; an unrouted address fixes it.
        ip -n "$NS" link add v0 type veth peer name v1
        ip -n "$NS" addr add 198.51.100.1/32 dev v0
        ip -n "$NS" link set v0 up
        ip -n "$NS" link set v1 up
    fi
}

write_conf() {
    local dir=$1 host cpus mem conf=$1/slurm.conf
    host=$(hostname -s)
    # Test tasks are tiny: offer 4 slots per core (config_overrides lets slurmd accept more CPUs than it has).
    cpus=$(( $(nproc) * 4 ))
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat >"$conf.tmp" <<EOF
# Written by scripts/ci/slurm.sh: a one-node test cluster on loopback.
ClusterName=mmbtest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pidfile
SlurmdPidFile=$dir/slurmd.pidfile
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
MinJobAge=600
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$conf.tmp" "$conf"
}

wait_idle() {
    local i
    for i in $(seq 1 300); do
        if in_ns sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            return 0
        fi
        sleep 0.1
    done
    die "the node did not become idle within 30 s; see $1/log/slurmctld.log and $1/log/slurmd.log"
}

start() {
    local dir
    [ $# -eq 1 ] || die "usage: slurm.sh start DIR"
    [ "$(id -u)" = 0 ] || die "start must run as root"
    command -v slurmctld >/dev/null || die "Slurm is not installed: run scripts/ci/slurm.sh install first"
    mkdir -p "$1"
    dir=$(cd "$1" && pwd)
    export SLURM_CONF="$dir/slurm.conf"
    printf 'export MMB_SLURM_WRAP="nsenter --net=/run/netns/%s"\nexport SLURM_CONF="%s"\n' "$NS" "$SLURM_CONF" >"$dir/env"
    if alive "$dir/munged.pid" && alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid" && [ -e "/run/netns/$NS" ]; then
        wait_idle "$dir"
        echo "slurm.sh: already running (PIDs in $dir)"
        cat "$dir/env"
        return
    fi
    netns_up
    write_conf "$dir"
    mkdir -p /run/munge
    chown munge:munge /run/munge
    [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
    if ! alive "$dir/munged.pid"; then
        nohup setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F >"$dir/log/munged.out" 2>&1 &
        echo $! >"$dir/munged.pid"
        for _ in $(seq 1 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
    fi
    if ! alive "$dir/slurmctld.pid"; then
        nohup nsenter --net="/run/netns/$NS" /usr/sbin/slurmctld -D -i -f "$SLURM_CONF" >"$dir/log/slurmctld.out" 2>&1 &
        echo $! >"$dir/slurmctld.pid"
    fi
    if ! alive "$dir/slurmd.pid"; then
        nohup nsenter --net="/run/netns/$NS" /usr/sbin/slurmd -D -N localhost -f "$SLURM_CONF" >"$dir/log/slurmd.out" 2>&1 &
        echo $! >"$dir/slurmd.pid"
    fi
    wait_idle "$dir"
    echo "slurm.sh: node idle (PIDs in $dir); for the tests:"
    cat "$dir/env"
}

stop() {
    local dir f pid
    [ $# -eq 1 ] || die "usage: slurm.sh stop DIR"
    dir=$1
    for f in slurmd slurmctld munged; do
        if alive "$dir/$f.pid"; then
            pid=$(cat "$dir/$f.pid")
            kill -TERM "$pid"
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$dir/$f.pid"
    done
    if [ -e "/run/netns/$NS" ]; then
        ip netns del "$NS"
    fi
    echo "slurm.sh: stopped"
}

cmd=${1:-}
shift || true
case "$cmd" in
    install) install ;;
    start) start "$@" ;;
    stop) stop "$@" ;;
    *) die "usage: slurm.sh install|start DIR|stop DIR" ;;
esac
