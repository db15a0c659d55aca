#!/bin/bash
# cluster.sh: a private single-node Slurm (munged, slurmctld, slurmd) for the tests, on 127.0.0.1.
#
#   tests/slurm/cluster.sh install     # apt-get install slurm-wlm munge libpmix2 libpmix-dev (as root)
#   tests/slurm/cluster.sh start       # start the daemons; prints the line to source: . DIR/env
#   tests/slurm/cluster.sh status      # exit 0 when the cluster answers
#   tests/slurm/cluster.sh stop        # stop every daemon it started, cancelling its jobs first
#
# DIR is $PPRS_SLURM_DIR (default /tmp/pprs-slurm): the munge key and socket, slurm.conf (from
# slurm.conf.in next to this script), the daemons' state, pid files and logs. The ports are picked
# free at start and munge listens on DIR/munge.socket, so nothing collides with a site Slurm or
# munge; clients find this cluster through SLURM_CONF=DIR/slurm.conf (set by DIR/env).
# The node has $PPRS_SLURM_CPUS CPUs (default 4; more than the cores is fine: config_overrides).
# Exit codes: 0 done, 2 the Slurm packages are missing or the daemons cannot be started.

set -uo pipefail
DIR=${PPRS_SLURM_DIR:-/tmp/pprs-slurm}
CPUS=${PPRS_SLURM_CPUS:-4}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PACKAGES=(slurm-wlm munge libpmix2 libpmix-dev)
DAEMONS=(slurmd slurmctld munged)  # stop order

log() { echo "cluster.sh: $*" >&2; }

# pid_of NAME: the pid in DIR/NAME.pid when that process is alive and is NAME, else nothing
pid_of() {
    local pid
    pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] && echo "$pid"
}

# free_ports N: N TCP ports on 127.0.0.1 that nothing listens on now
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
PY
}

install() {
    # libpmix-dev: Debian's mpi/pmix plugin dlopens pmix2/lib/libpmix.so, which only the -dev package has
    if command -v slurmctld >/dev/null && command -v munged >/dev/null \
            && compgen -G "/usr/lib/*/pmix2/lib/libpmix.so" >/dev/null; then
        return 0
    fi
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        log "needs ${PACKAGES[*]}; install them as root (apt-get install)"
        return 2
    fi
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null; }
    then
        log "apt-get install ${PACKAGES[*]} failed"
        return 2
    fi
}

status() {
    [[ -n "$(pid_of slurmctld)" && -n "$(pid_of slurmd)" ]] \
        && SLURM_CONF="$DIR/slurm.conf" scontrol ping >/dev/null 2>&1
}

start() {
    local host ports started
    started=$(date +%s.%N)
    if status; then log "already running: . $DIR/env"; return 0; fi
    for tool in munged slurmctld slurmd scontrol; do
        command -v "$tool" >/dev/null || { log "$tool is not installed (tests/slurm/cluster.sh install)"; return 2; }
    done
    if [[ "$(id -u)" != 0 ]]; then log "slurmd must run as root"; return 2; fi
    stop 2>/dev/null  # leftovers of an earlier start
    if [[ -n "$(ls -A "$DIR" 2>/dev/null)" && ! -f "$DIR/slurm.conf" ]]; then
        log "$DIR holds files of something else: set PPRS_SLURM_DIR to a new folder"
        return 2
    fi
    rm -rf "$DIR"
    if ! { mkdir -m 700 "$DIR" && mkdir "$DIR/state"; }; then log "cannot create $DIR"; return 2; fi
    host=$(hostname -s)
    read -r -a ports <<< "$(free_ports 2)"
    sed -e "s|@HOST@|$host|g" -e "s|@DIR@|$DIR|g" -e "s|@USER@|$(id -un)|g" -e "s|@CPUS@|$CPUS|g" \
        -e "s|@CTLD_PORT@|${ports[0]}|g" -e "s|@SLURMD_PORT@|${ports[1]}|g" \
        "$HERE/slurm.conf.in" > "$DIR/slurm.conf"
    # two stand-in GPUs (no CUDA behind them): slurmd wants a device file per GPU; next to slurm.conf
    printf 'AutoDetect=off\nName=gpu File=/dev/null,/dev/zero\n' > "$DIR/gres.conf"
    echo "export SLURM_CONF=$DIR/slurm.conf" > "$DIR/env"
    head -c 1024 /dev/urandom > "$DIR/munge.key" && chmod 400 "$DIR/munge.key"
    munged --force --socket="$DIR/munge.socket" --key-file="$DIR/munge.key" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed" \
        || { log "munged failed: $DIR/munged.log"; return 2; }
    export SLURM_CONF="$DIR/slurm.conf"
    slurmctld -c -f "$SLURM_CONF" || { log "slurmctld failed: $DIR/slurmctld.log"; return 2; }
    slurmd -f "$SLURM_CONF" || { log "slurmd failed: $DIR/slurmd.log"; return 2; }
    for _ in $(seq 100); do  # up to 20 s for the node to register
        if [[ "$(sinfo -h -o %t 2>/dev/null)" == idle ]]; then
            log "up in $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s: node $host," \
                "$CPUS CPUs, ports ${ports[*]}; clients: . $DIR/env"
            return 0
        fi
        sleep 0.2
    done
    log "the node did not come up: $DIR/slurmctld.log, $DIR/slurmd.log"
    return 2
}

stop() {
    local name pid
    if [[ -f "$DIR/slurmctld.log" ]]; then
        log "the cluster ran $(grep -c 'sched: Allocate JobId=' "$DIR/slurmctld.log") job starts"
    fi
    if [[ -n "$(pid_of slurmctld)" ]]; then  # jobs first, so that no job step outlives slurmd
        SLURM_CONF="$DIR/slurm.conf" scancel --full --user="$(id -un)" 2>/dev/null
        for _ in $(seq 50); do
            [[ -z "$(SLURM_CONF="$DIR/slurm.conf" squeue -h -t R,CG 2>/dev/null)" ]] && break
            sleep 0.2
        done
    fi
    for name in "${DAEMONS[@]}"; do
        pid=$(pid_of "$name") || continue
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
        log "stopped $name ($pid)"
    done
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) log "usage: tests/slurm/cluster.sh install|start|status|stop"; exit 2 ;;
esac
