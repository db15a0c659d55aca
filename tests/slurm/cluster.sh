#!/bin/bash
# cluster.sh: a private Slurm (munged, slurmctld, slurmd) for the tests: one node on 127.0.0.1, or two
# nodes, each in its own namespaces, as a small cluster.
#
#   tests/slurm/cluster.sh install          # apt-get install slurm-wlm munge libpmix2 libpmix-dev (as root)
#   tests/slurm/cluster.sh start            # one node; prints the line to source: . DIR/env
#   tests/slurm/cluster.sh start-two-nodes  # two nodes (below); clients run as DIR/client COMMAND...
#   tests/slurm/cluster.sh status           # exit 0 when the cluster answers
#   tests/slurm/cluster.sh kill-node NODE   # kill -9 every process of NODE (two nodes): a node that died
#   tests/slurm/cluster.sh revive-node NODE # NODE's slurmd again, as after a reboot, until the node is idle
#   tests/slurm/cluster.sh stop             # stop every daemon it started, cancelling its jobs first
#
# DIR is $PPRS_SLURM_DIR (default /tmp/pprs-slurm): the munge key and socket, slurm.conf (from
# slurm.conf.in next to this script), the daemons' state, pid files and logs. Munge listens on
# DIR/munge.socket, so nothing collides with a site Slurm or munge; clients find this cluster through
# SLURM_CONF=DIR/slurm.conf (set by DIR/env). A node has $PPRS_SLURM_CPUS CPUs (default 4; more than the
# cores is fine: config_overrides) and two stand-in GPUs.
#
# One node: the daemons listen on 127.0.0.1, on ports picked free at start.
# Two nodes (pprs-n1, pprs-n2): each node is its own network, UTS and mount namespace (its host name, its
# own /tmp and /etc/hosts), and slurmctld runs in a third network namespace; a bridge there joins them
# (10.252.0.0/24: the controller .1, the nodes .11 and .12). Those addresses exist only inside the
# namespaces, never on the machine's interfaces, so clients (sbatch, scontrol ...) run in the controller's
# namespace: DIR/client COMMAND.... The file system is shared, as on a cluster, except /tmp: in a node,
# /tmp is DIR/NODE.tmp, with DIR and the directories listed in $PPRS_SLURM_SHARED (':'-separated: a job's
# working directory, a virtual environment) mounted back at their own paths where they are under /tmp.
# The namespaces are entered with nsenter: `ip netns exec` remounts /sys, and slurmd then finds no cgroup
# file system. A holder process keeps each node's namespaces; `kill-node` spares it, as the hardware.
# Exit codes: 0 done, 2 the Slurm packages are missing or the daemons or namespaces cannot be made.

set -uo pipefail
DIR=${PPRS_SLURM_DIR:-/tmp/pprs-slurm}
CPUS=${PPRS_SLURM_CPUS:-4}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PACKAGES=(slurm-wlm munge libpmix2 libpmix-dev)
TWO_NODES=(pprs-n1 pprs-n2)
SUBNET=10.252.0  # two nodes: .1 the controller, .11 and .12 the nodes, inside the namespaces only
NETNS=pprs-slurm-$(cksum <<< "$DIR" | cut -d ' ' -f 1)  # the namespaces' names: one set per DIR

log() { echo "cluster.sh: $*" >&2; }

# pid_of FILE COMMAND: the pid in DIR/FILE.pid when that process is alive and runs COMMAND, else nothing
pid_of() {
    local pid
    pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] && echo "$pid"
}

# nodes: the node names of the cluster in DIR (written at start)
nodes() { cat "$DIR/nodes" 2>/dev/null; }

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
    local node
    [[ -n "$(pid_of slurmctld slurmctld)" && -n "$(nodes)" ]] || return 1
    for node in $(nodes); do
        [[ -n "$(pid_of "slurmd-$node" slurmd)" ]] || return 1
    done
    SLURM_CONF="$DIR/slurm.conf" "$DIR/client" scontrol ping >/dev/null 2>&1
}

# prepare TOOLS...: checks the tools and root, stops what an earlier start left and makes DIR afresh
prepare() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { log "$tool is not installed (tests/slurm/cluster.sh install)"; return 2; }
    done
    if [[ "$(id -u)" != 0 ]]; then log "slurmd must run as root"; return 2; fi
    stop 2>/dev/null  # leftovers of an earlier start
    if [[ -n "$(ls -A "$DIR" 2>/dev/null)" && ! -f "$DIR/slurm.conf" ]]; then
        log "$DIR holds files of something else: set PPRS_SLURM_DIR to a new folder"
        return 2
    fi
    rm -rf "$DIR"
    if ! { mkdir -p "$(dirname "$DIR")" && mkdir -m 700 "$DIR" && mkdir "$DIR/state"; }; then log "cannot create $DIR"; return 2; fi
}

# configure CTLD_ADDR CTLD_PORT SLURMD_PORT NODE=ADDR...: slurm.conf, gres.conf, env; then starts munged
configure() {
    local ctld_addr=$1 ctld_port=$2 slurmd_port=$3 node names=()
    shift 3
    sed -e "s|@HOST@|$(hostname -s)|g" -e "s|@DIR@|$DIR|g" -e "s|@USER@|$(id -un)|g" \
        -e "s|@CTLD_ADDR@|$ctld_addr|g" -e "s|@CTLD_PORT@|$ctld_port|g" -e "s|@SLURMD_PORT@|$slurmd_port|g" \
        "$HERE/slurm.conf.in" > "$DIR/slurm.conf"
    for node in "$@"; do
        names+=("${node%=*}")
        echo "NodeName=${node%=*} NodeAddr=${node#*=} CPUs=$CPUS Gres=gpu:2 State=UNKNOWN" >> "$DIR/slurm.conf"
    done
    local IFS=,
    echo "PartitionName=test Nodes=${names[*]} Default=YES MaxTime=INFINITE State=UP" >> "$DIR/slurm.conf"
    unset IFS
    echo "${names[*]}" > "$DIR/nodes"
    # two stand-in GPUs (no CUDA behind them): slurmd wants a device file per GPU; next to slurm.conf
    printf 'AutoDetect=off\nName=gpu File=/dev/null,/dev/zero\n' > "$DIR/gres.conf"
    echo "export SLURM_CONF=$DIR/slurm.conf" > "$DIR/env"
    head -c 1024 /dev/urandom > "$DIR/munge.key" && chmod 400 "$DIR/munge.key"
    munged --force --socket="$DIR/munge.socket" --key-file="$DIR/munge.key" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed" \
        || { log "munged failed: $DIR/munged.log"; return 2; }
}

# wait_up STARTED WHAT: waits up to 30 s for every node to be idle; says how long the start took
wait_up() {
    local n_nodes
    n_nodes=$(wc -w < "$DIR/nodes")
    for _ in $(seq 150); do
        if [[ "$(SLURM_CONF="$DIR/slurm.conf" "$DIR/client" sinfo -h -N -o %t 2>/dev/null | grep -c '^idle$')" \
                == "$n_nodes" ]]; then
            log "up in $(python3 -c "print(f'{$(date +%s.%N) - $1:.1f}')") s: $2; clients: . $DIR/env"
            return 0
        fi
        sleep 0.2
    done
    log "the nodes did not come up: $DIR/slurmctld.log, $DIR/slurmd-*.log"
    return 2
}

start() {
    local host ports started
    started=$(date +%s.%N)
    if status; then log "already running: . $DIR/env"; return 0; fi
    prepare munged slurmctld slurmd scontrol || return 2
    host=$(hostname -s)
    read -r -a ports <<< "$(free_ports 2)"
    configure 127.0.0.1 "${ports[0]}" "${ports[1]}" "$host=127.0.0.1" || return 2
    printf '#!/bin/sh\nexec "$@"\n' > "$DIR/client" && chmod +x "$DIR/client"
    export SLURM_CONF="$DIR/slurm.conf"
    slurmctld -c -f "$SLURM_CONF" || { log "slurmctld failed: $DIR/slurmctld.log"; return 2; }
    slurmd -f "$SLURM_CONF" -N "$host" || { log "slurmd failed: $DIR/slurmd-$host.log"; return 2; }
    wait_up "$started" "node $host, $CPUS CPUs, ports ${ports[*]}"
}

# HOLDER: run by each node's holder in the node's new UTS and mount namespaces (and its network namespace):
# names the node, gives it its own /etc/hosts and /tmp, mounts the shared directories back (reached through
# fd 3, the machine's /tmp, once /tmp is covered), says ready and sleeps. Arguments: NODE DIR SHARED...
# shellcheck disable=SC2016  # expanded by the holder's shell
HOLDER='set -e
node=$1 dir=$2
shift 2
hostname "$node"
mount --bind "$dir/hosts" /etc/hosts
exec 3</tmp
mount --bind "$dir/$node.tmp" /tmp
for path in "$dir" "$@"; do
    case $path in
        /tmp/?*) mkdir -p "$path" && mount --no-canonicalize --bind "/proc/self/fd/3/${path#/tmp/}" "$path" ;;
    esac
done
exec 3<&-
echo ready
exec sleep infinity'

start_two_nodes() {
    local started ctl node netns i=0 shared=() path
    started=$(date +%s.%N)
    if status; then log "already running: . $DIR/env; $DIR/client COMMAND..."; return 0; fi
    prepare munged slurmctld slurmd scontrol ip nsenter unshare || return 2
    IFS=: read -r -a shared <<< "${PPRS_SLURM_SHARED:-}"
    for path in "${shared[@]}"; do
        [[ -d "$path" ]] || { log "PPRS_SLURM_SHARED: $path is not a directory"; return 2; }
    done
    ctl=$NETNS-ctl
    echo "$ctl" > "$DIR/netns"
    printf '127.0.0.1 localhost\n%s.1 %s\n%s.11 %s\n%s.12 %s\n' "$SUBNET" "$(hostname -s)" \
        "$SUBNET" "${TWO_NODES[0]}" "$SUBNET" "${TWO_NODES[1]}" > "$DIR/hosts"
    if ! { ip netns add "$ctl" && ip -n "$ctl" link set lo up && ip -n "$ctl" link add br0 type bridge \
            && ip -n "$ctl" addr add "$SUBNET.1/24" dev br0 && ip -n "$ctl" link set br0 up; }; then
        log "cannot make the controller's network namespace and bridge (root, a kernel with netns and bridges)"
        return 2
    fi
    for node in "${TWO_NODES[@]}"; do
        i=$((i + 1))
        netns=$NETNS-$node
        echo "$netns" >> "$DIR/netns"
        if ! { ip netns add "$netns" && ip -n "$netns" link set lo up \
                && ip -n "$netns" link add eth0 type veth peer name "v$i" netns "$ctl" \
                && ip -n "$ctl" link set "v$i" master br0 up \
                && ip -n "$netns" addr add "$SUBNET.1$i/24" dev eth0 && ip -n "$netns" link set eth0 up; }; then
            log "cannot make $node's network namespace and link"
            return 2
        fi
        mkdir "$DIR/$node.tmp" && chmod 1777 "$DIR/$node.tmp"
        nsenter --net="/run/netns/$netns" -- unshare --uts --mount --propagation private -- \
            bash -c "$HOLDER" holder "$node" "$DIR" "${shared[@]}" > "$DIR/$node.holder.log" 2>&1 &
        echo $! > "$DIR/$node.holder.pid"
    done
    configure "$SUBNET.1" 6817 6818 "${TWO_NODES[0]}=$SUBNET.11" "${TWO_NODES[1]}=$SUBNET.12" || return 2
    printf '#!/bin/sh\nexec nsenter --net=/run/netns/%s -- "$@"\n' "$ctl" > "$DIR/client" && chmod +x "$DIR/client"
    export SLURM_CONF="$DIR/slurm.conf"
    nsenter --net="/run/netns/$ctl" -- slurmctld -c -f "$SLURM_CONF" \
        || { log "slurmctld failed: $DIR/slurmctld.log"; return 2; }
    for node in "${TWO_NODES[@]}"; do
        for _ in $(seq 100); do  # up to 10 s for the holder to make the namespaces
            grep -q '^ready$' "$DIR/$node.holder.log" 2>/dev/null && break
            kill -0 "$(cat "$DIR/$node.holder.pid")" 2>/dev/null || break
            sleep 0.1
        done
        if ! grep -q '^ready$' "$DIR/$node.holder.log" 2>/dev/null; then
            log "cannot make $node's UTS and mount namespaces: $(cat "$DIR/$node.holder.log")"
            return 2
        fi
        start_slurmd "$node" || return 2
    done
    wait_up "$started" "nodes ${TWO_NODES[*]} ($CPUS CPUs each) in network namespaces $NETNS-*"
}

# start_slurmd NODE: slurmd of NODE (two nodes), in the namespaces of the node's holder
start_slurmd() {
    local holder
    holder=$(pid_of "$1.holder" sleep) || { log "no node $1 here (or its holder died)"; return 2; }
    SLURM_CONF="$DIR/slurm.conf" nsenter -t "$holder" --net --uts --mount -- slurmd -f "$DIR/slurm.conf" -N "$1" \
        || { log "slurmd failed on $1: $DIR/slurmd-$1.log"; return 2; }
}

# revive_node NODE: NODE back after kill-node, as after a reboot: its slurmd again, until Slurm has it idle
revive_node() {
    local started
    started=$(date +%s.%N)
    start_slurmd "$1" || return 2
    wait_up "$started" "$1 again"
}

# kill_node NODE: kill -9 every process in NODE's namespaces (its slurmd, job steps and ranks) but the holder
kill_node() {
    local node=$1 netns holder pids
    netns=$NETNS-$node
    holder=$(pid_of "$node.holder" sleep) || { log "no node $node here"; return 2; }
    pids=$(ip netns pids "$netns" | grep -vx "$holder")
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086  # one pid a word
        kill -KILL $pids 2>/dev/null
    fi
    log "killed $node: $(echo "$pids" | wc -w) processes"
}

# stop_daemons NAME...: TERM to the daemons whose pid files are DIR/NAME.pid, then up to 5 s for them to end
# (kill -9 after that)
stop_daemons() {
    local name pid stopping=()
    for name in "$@"; do
        pid=$(pid_of "$name" "${name%%-*}") || continue
        kill "$pid" && stopping+=("$pid") && log "stopping $name ($pid)"
    done
    for pid in "${stopping[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    done
}

stop() {
    local node netns pids daemons=()
    if [[ -f "$DIR/slurmctld.log" ]]; then
        log "the cluster ran $(grep -c 'sched: Allocate JobId=' "$DIR/slurmctld.log") job starts"
    fi
    if [[ -n "$(pid_of slurmctld slurmctld)" ]]; then  # jobs first, so that no job step outlives slurmd
        SLURM_CONF="$DIR/slurm.conf" "$DIR/client" scancel --full --user="$(id -un)" 2>/dev/null
        for _ in $(seq 50); do
            [[ -z "$(SLURM_CONF="$DIR/slurm.conf" "$DIR/client" squeue -h -t R,CG 2>/dev/null)" ]] && break
            sleep 0.2
        done
    fi
    # the Slurm daemons together (each takes a second or two), then munged, which they use until they end
    for node in $(nodes); do daemons+=("slurmd-$node"); done
    stop_daemons ${daemons[@]+"${daemons[@]}"} slurmctld
    stop_daemons munged
    while read -r netns; do  # two nodes: whatever still runs in the namespaces, holders included
        [[ -n "$netns" && -e "/run/netns/$netns" ]] || continue
        pids=$(ip netns pids "$netns")
        if [[ -n "$pids" ]]; then
            # shellcheck disable=SC2086  # one pid a word
            kill -KILL $pids 2>/dev/null
        fi
        ip netns del "$netns" && log "removed network namespace $netns ($(echo "$pids" | wc -w) processes killed)"
    done < <(cat "$DIR/netns" 2>/dev/null)
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    start-two-nodes) start_two_nodes ;;
    kill-node) kill_node "${2:?kill-node NODE}" ;;
    revive-node) revive_node "${2:?revive-node NODE}" ;;
    stop) stop ;;
    status) status ;;
    *) log "usage: tests/slurm/cluster.sh install|start|start-two-nodes|status|kill-node NODE|revive-node NODE|stop"
       exit 2 ;;
esac
