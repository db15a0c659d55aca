"""The CPU job script on a two-node Slurm (tests/slurm/cluster.sh start-two-nodes): nodes pprs-n1 and pprs-n2,
each its own network, UTS and mount namespace, joined by a bridge. Two ranks per node, under srun's PMIx and
under Open MPI's mpirun: bitwise the serial engine's run; `scontrol requeue` resumes bitwise; a node lost
(kill -9 of everything on it) never ends the job as done.

The cluster is started here, in $PPRS_SLURM_TWO_NODES_DIR (.ci/run sets it, and stops it on exit whatever
happens here) or in a folder of pytest's, and stopped after the last test. Where Slurm or namespaces are
missing the tests skip with the reason; with PPRS_REQUIRE_SLURM=1 (CI) they fail instead. The lost node is
the last test: the cluster is one node short after it. Every wait has a deadline.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pprs_mpi.solve import main
from pprs_mpi.trace import load
from test_slurm import CLUSTER, DONE, PROBLEM, ROOT, Client, same_iterates, wait_for_rows

pytestmark = [pytest.mark.slurm, pytest.mark.mpi]

NODES = ("pprs-n1", "pprs-n2")
TWO_BY_TWO = ("-N", "2", "--ntasks=4", "--ntasks-per-node=2")
LONG = 2000  # iterations of a run that is requeued while it goes


def _cluster(directory, *command, shared=()):
    env = {**os.environ, "PPRS_SLURM_DIR": str(directory), "PPRS_SLURM_SHARED": ":".join(map(str, shared))}
    return subprocess.run(["bash", str(CLUSTER), *command], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """The two-node cluster's DIR, started here with pytest's folders, the interpreter and the checkout shared."""
    directory = Path(os.environ.get("PPRS_SLURM_TWO_NODES_DIR") or tmp_path_factory.mktemp("slurm-two-nodes"))
    shared = {tmp_path_factory.getbasetemp(), Path(sys.prefix), ROOT,
              *(Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).is_dir())}
    missing = [tool for tool in ("slurmctld", "ip", "nsenter", "unshare") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        started, reason = None, (f"not installed: {', '.join(missing)}" if missing else "a Slurm node must run as root")
    else:
        started = _cluster(directory, "start-two-nodes", shared=sorted(map(str, shared)))
        reason = f"tests/slurm/cluster.sh start-two-nodes failed: {started.stderr.strip()}"
    if started is None or started.returncode != 0:
        if started is not None:
            _cluster(directory, "stop")
        if os.environ.get("PPRS_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield directory
    finally:
        _cluster(directory, "stop")


@pytest.fixture
def cluster(two_nodes, tmp_path):
    client = Client(two_nodes / "slurm.conf", tmp_path, via=[two_nodes / "client"])
    # mpirun maps the ranks as Slurm placed the tasks: an oversubscribing mapping policy puts all on the first node
    client.env.pop("PRTE_MCA_rmaps_default_mapping_policy")
    yield client
    if client.jobs:
        client.command("scancel", *client.jobs, check=False)


def serial_with_four_stages(tmp_path, iters):
    """The reference: the serial engine emulating 4 stages, in this process."""
    out = tmp_path / f"serial-{iters}.h5"
    assert main(["--problem", PROBLEM["PROBLEM"], "--depth", PROBLEM["DEPTH"], "-K", PROBLEM["K"], "--gamma",
                 PROBLEM["GAMMA"], "--lr", PROBLEM["LR"], "--seed", PROBLEM["SEED"], "--iters", str(iters),
                 "--engine", "serial", "--stages", "4", "--quiet", "--out", str(out)]) == 0
    return load(out)


def test_two_ranks_per_node_under_pmix_and_under_mpirun_end_where_the_serial_engine_ends(cluster, tmp_path):
    runs = {"pmix": {"SRUN_MPI": "pmix"}, "mpirun": {"LAUNCHER": "mpirun"}}
    jobs = {name: cluster.sbatch("pprs_cpu.slurm", *TWO_BY_TWO, ITERS=200, OUT=tmp_path / f"{name}.h5", **PROBLEM,
                                 **launch) for name, launch in runs.items()}
    reference = serial_with_four_stages(tmp_path, 200)
    for name, job in jobs.items():
        record = cluster.wait_done(job)["-"]
        text = cluster.log(f"*-{job}.out")
        assert (record["JobState"], record["ExitCode"], record["NodeList"]) == ("COMPLETED", "0:0", "pprs-n[1-2]"), text
        trace = load(tmp_path / f"{name}.h5")
        assert trace.status == "completed" and trace.attrs["ranks"] == 4
        assert trace.attrs["rank_hosts"] == "pprs-n1,pprs-n1,pprs-n2,pprs-n2", name
        assert same_iterates(trace, reference), name


def test_scontrol_requeue_resumes_bitwise_on_both_nodes(cluster, tmp_path):
    """scontrol requeue TERMs the job (the ranks on both nodes too): the run checkpoints and Slurm requeues it."""
    out = tmp_path / "run.h5"
    job = cluster.sbatch("pprs_cpu.slurm", *TWO_BY_TWO, ITERS=LONG, OUT=out, SRUN_MPI="pmix", **PROBLEM)
    wait_for_rows(out)
    cluster.command("scontrol", "requeue", job)
    record = cluster.wait(job, lambda r: r["-"]["Restarts"] == "1" and r["-"]["JobState"] in DONE, timeout=180)["-"]
    text = cluster.log(f"*-{job}.out")
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), text
    assert "checkpointed in" in text and "resuming" in text and "--resume" in text, text
    trace = load(out)
    assert trace.status == "completed" and trace.attrs["resumes"] == 1
    assert trace.attrs["rank_hosts"] == "pprs-n1,pprs-n1,pprs-n2,pprs-n2"
    assert same_iterates(trace, serial_with_four_stages(tmp_path, LONG))


def test_a_lost_node_is_never_reported_done(two_nodes, cluster, tmp_path):
    """Everything on pprs-n2 killed (slurmd, Open MPI's daemon, ranks 2 and 3) under LAUNCHER=mpirun, whose
    mpirun exits 0 when it loses a node's daemon; no checkpoint to resume from (CHECKPOINT_EVERY=0), so the
    job fails instead of requeueing. Last in this file: the node stays dead."""
    out = tmp_path / "run.h5"
    job = cluster.sbatch("pprs_cpu.slurm", *TWO_BY_TWO, ITERS=10_000_000, OUT=out, LAUNCHER="mpirun",
                         CHECKPOINT_EVERY=0, **PROBLEM)
    wait_for_rows(out)
    killed = _cluster(two_nodes, "kill-node", NODES[1])
    assert killed.returncode == 0, killed.stderr
    record = cluster.wait(job, lambda r: r["-"]["ExitCode"] != "0:0" or r["-"]["JobState"] in DONE)["-"]
    text = cluster.log(f"*-{job}.out")
    assert record["JobState"] != "COMPLETED" and record["ExitCode"] != "0:0", text
    assert "done:" not in text and load(out).status != "completed"
