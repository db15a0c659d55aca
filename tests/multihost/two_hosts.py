"""Two hosts on one machine, for tests/multihost: MPI jobs whose ranks run on two hostnames and talk TCP.

What the fixture builds, all of it removed afterwards:

- a private network namespace per host (`ip netns add`), joined by a veth pair (PEER_A in the first, PEER_B
  in the second) with addresses of SUBNET: they exist inside those namespaces only, never on the machine's
  interfaces. (Two hostnames sharing one network namespace are not enough: Open MPI's launcher sees the
  same addresses on both and takes them for one node);
- a holder process in each, in its own UTS namespace named as its host (HOSTS);
- `agent.sh`, given to Open MPI as its `plm_ssh_agent`: it runs the daemon of the second host inside that
  host's namespaces, as ssh would on a real cluster;
- Open MPI's out-of-band channel and its TCP transport restricted to SUBNET (the veth pair).

Ranks on different hostnames are on different nodes for Open MPI (no shared memory between them), and
the file system is shared, as on a cluster. Where namespaces cannot be made (not root, no `ip`, a
container without CAP_SYS_ADMIN), `TwoHosts.start` raises Unavailable with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HOSTS = ("hosta", "hostb")
SUBNET, ADDRESSES = "10.251.0.0/24", ("10.251.0.1/24", "10.251.0.2/24")
PEER_A, PEER_B = "pprsmh0", "pprsmh1"
AGENT = Path(__file__).with_name("agent.sh")
SETUP_SECONDS = 20


class Unavailable(RuntimeError):
    """This machine cannot make the namespaces; the message says why."""


class TwoHosts:
    """The namespaces, holders and MPI settings; `mpirun` and `run_on` launch commands on a host."""

    def __init__(self, env: dict):
        # each host's slots are given: no default mapping policy (an oversubscribing one maps every rank to
        # the first host)
        self.env = {k: v for k, v in env.items() if k != "PRTE_MCA_rmaps_default_mapping_policy"}
        self.launches = 0
        self.netns = {host: f"pprs-multihost-{os.getpid()}-{host}" for host in HOSTS}
        self.dir = Path(tempfile.mkdtemp(prefix="pprs-multihost."))
        self.holders: dict[str, subprocess.Popen] = {}

    def start(self) -> "TwoHosts":
        missing = [tool for tool in ("ip", "unshare", "nsenter") if shutil.which(tool) is None]
        if missing:
            raise Unavailable(f"{', '.join(missing)} not installed (apt-get install iproute2 util-linux)")
        if os.geteuid() != 0:
            raise Unavailable("network and UTS namespaces need root")
        try:
            for host in HOSTS:
                self._ip("netns", "add", self.netns[host])
                self._ip("-n", self.netns[host], "link", "set", "lo", "up")
            a, b = (self.netns[host] for host in HOSTS)
            self._ip("-n", a, "link", "add", PEER_A, "type", "veth", "peer", "name", PEER_B, "netns", b)
            for netns, device, address in zip((a, b), (PEER_A, PEER_B), ADDRESSES):
                self._ip("-n", netns, "addr", "add", address, "dev", device)
                self._ip("-n", netns, "link", "set", device, "up")
            for host in HOSTS:
                self.holders[host] = subprocess.Popen(
                    ["ip", "netns", "exec", self.netns[host], "unshare", "--uts", "sh", "-c",
                     f"hostname {host} && echo ready && exec sleep 3600"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                ready = self.holders[host].stdout.readline()
                if ready != "ready\n":
                    raise Unavailable(f"cannot make a UTS namespace: {self.holders[host].stderr.read().strip()}")
                (self.dir / f"{host}.pid").write_text(str(self.holders[host].pid))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for holder in self.holders.values():
            holder.kill()
            holder.wait(timeout=SETUP_SECONDS)
        for netns in self.netns.values():  # the veth pair goes with them
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=SETUP_SECONDS)
        shutil.rmtree(self.dir, ignore_errors=True)

    def run_on(self, host: str, command: list[str], timeout: float = 60, env: dict | None = None,
               background: bool = False):
        """`command` run on `host` (in its namespaces); a CompletedProcess, or with `background` a Popen."""
        argv = ["nsenter", "-t", str(self.holders[host].pid), "--uts", "--net", "--", *map(str, command)]
        self.launches += 1
        tmp = self.dir / f"tmp{self.launches}"  # Open MPI's session files: never those of a launch still ending
        tmp.mkdir()
        environment = {**self.env, "PPRS_MULTIHOST_DIR": str(self.dir), "TMPDIR": str(tmp), **(env or {})}
        if background:
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=environment)

    def mpirun(self, ranks: dict[str, int], args: list, launch_from: str = HOSTS[0], mpirun_options=(),
               timeout: float = 60, env: dict | None = None, background: bool = False):
        """`python -m pprs_mpi.solve ARGS` on ranks[host] ranks of each host, launched by an mpirun on
        `launch_from`, whose ranks come first (rank 0 runs there); see `run_on`."""
        hosts = ",".join(f"{host}:{n}" for host, n in ranks.items())
        command = ["mpirun", "-n", sum(ranks.values()), "--host", hosts, "--bind-to", "none",  # more ranks than cores
                   "--mca", "plm_ssh_agent", AGENT, "--prtemca", "oob_tcp_if_include", SUBNET,
                   "--mca", "btl", "tcp,sm,self", "--mca", "btl_tcp_if_include", SUBNET, *mpirun_options,
                   sys.executable, "-m", "pprs_mpi.solve", *args]
        return self.run_on(launch_from, command, timeout=timeout, env=env, background=background)

    def _ip(self, *args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=SETUP_SECONDS)
        if result.returncode != 0:
            raise Unavailable(f"'ip {' '.join(args)}' failed: {result.stderr.strip()}")
