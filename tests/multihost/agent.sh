#!/usr/bin/env bash
# Open MPI's "ssh" for the two-host fixture (plm_ssh_agent): `agent.sh [OPTIONS] HOST COMMAND...` runs
# COMMAND in HOST's UTS and network namespaces, those of the holder process whose pid the fixture wrote
# to $PPRS_MULTIHOST_DIR/HOST.pid. Options before HOST (ssh's) are ignored.
set -euo pipefail
while [[ $# -gt 0 && $1 == -* ]]; do
    shift
done
host=$1
shift
pid=$(<"$PPRS_MULTIHOST_DIR/$host.pid")
exec nsenter -t "$pid" --uts --net -- /bin/sh -c "$*"
