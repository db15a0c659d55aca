"""The CPU job script on a two-node Slurm (tests/slurm/cluster.sh start-two-nodes): nodes pprs-n1 and pprs-n2,
each its own network, UTS and mount namespace, joined by a bridge. Two ranks per node, under srun's PMIx and
under Open MPI's mpirun: bitwise the serial engine's run; `scontrol requeue` resumes bitwise; a node lost
(kill -9 of everything on it) never ends the job as done: it fails, or with a checkpoint it is requeued and
resumes bitwise once the node is back.

The cluster is started here, in $PPRS_SLURM_TWO_NODES_DIR (.ci/run sets it, and stops it on exit whatever
happens here) or in a folder of pytest's, and stopped after the last test. Where Slurm or namespaces are
missing the tests skip with the reason; with PPRS_REQUIRE_SLURM=1 (CI) they fail instead. A node killed by a
test is started again before the next. Every wait has a deadline.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pprs_mpi.solve import main
from pprs_mpi.trace import TraceError, load
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
        started, reason = None, (f"not installed: {', '.join(missing)} (tests/slurm/cluster.sh install; apt-get "
                                 "install iproute2 util-linux)" if missing else "a Slurm node must run as root")
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
    """A client of the two-node cluster working in tmp_path; cancels the jobs it submitted at the end."""
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


class NodeLoss:
    """kill(): kill -9 of everything on pprs-n2 (slurmd, Open MPI's daemon, ranks 2 and 3), as when the node dies;
    revive(): its slurmd started again, as after a reboot, once Slurm has both nodes idle."""

    def __init__(self, directory):
        self.directory, self.dead = directory, False

    def kill(self):
        result = _cluster(self.directory, "kill-node", NODES[1])
        assert result.returncode == 0, result.stderr
        self.dead = True

    def revive(self):
        result = _cluster(self.directory, "revive-node", NODES[1])
        assert result.returncode == 0, result.stderr
        self.dead = False


@pytest.fixture
def node_loss(two_nodes, cluster):
    """A NodeLoss; a node left dead is revived after the test (its jobs cancelled first), so the cluster is whole."""
    loss = NodeLoss(two_nodes)
    yield loss
    if loss.dead:
        cluster.command("scancel", *cluster.jobs, check=False)
        loss.revive()


def wait_for_checkpoint(trace: Path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if trace.exists() and load(trace).has_checkpoint:
                return
        except TraceError:
            pass  # being created, or locked by the writer for a moment
        time.sleep(0.2)
    raise AssertionError(f"{trace} got no checkpoint in {timeout} s")


def test_a_lost_node_without_a_checkpoint_fails_the_job(cluster, node_loss, tmp_path):
    """Under LAUNCHER=mpirun, whose mpirun exits 0 when it loses a node's daemon ('PRTE has lost communication');
    nothing to resume from (CHECKPOINT_EVERY=0), so the job fails instead of requeueing."""
    out = tmp_path / "run.h5"
    job = cluster.sbatch("pprs_cpu.slurm", *TWO_BY_TWO, ITERS=10_000_000, OUT=out, LAUNCHER="mpirun",
                         CHECKPOINT_EVERY=0, **PROBLEM)
    wait_for_rows(out)
    node_loss.kill()
    record = cluster.wait(job, lambda r: r["-"]["ExitCode"] != "0:0" or r["-"]["JobState"] in DONE)["-"]
    text = cluster.log(f"*-{job}.out")
    assert record["JobState"] != "COMPLETED" and record["ExitCode"] != "0:0", text
    assert "done:" not in text and load(out).status != "completed"


def test_a_lost_node_after_a_checkpoint_requeues_the_job_and_it_resumes_bitwise(cluster, node_loss, tmp_path):
    """The same loss after a checkpoint: the script requeues the job itself (Slurm would not: it marks the node
    down only after SlurmdTimeout), and once the node is back the job resumes and ends where the serial run ends."""
    out = tmp_path / "run.h5"
    job = cluster.sbatch("pprs_cpu.slurm", *TWO_BY_TWO, ITERS=LONG, OUT=out, LAUNCHER="mpirun", CHECKPOINT_EVERY=50,
                         **PROBLEM)
    wait_for_checkpoint(out)
    node_loss.kill()
    deadline = time.monotonic() + 120  # not cluster.wait, which would start the requeued job on the dead node
    while cluster.records(job)["-"]["Restarts"] != "1":
        assert time.monotonic() < deadline, f"job {job} was not requeued: {cluster.log(f'*-{job}.out')}"
        time.sleep(0.5)
    assert load(out).status != "completed"
    node_loss.revive()
    record = cluster.wait_done(job, timeout=180)["-"]
    text = cluster.log(f"*-{job}.out")
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), text
    assert "ranks were lost" in text and f"requeueing job {job}" in text and "resuming" in text, text
    trace = load(out)
    assert trace.status == "completed" and trace.attrs["resumes"] == 1
    assert same_iterates(trace, serial_with_four_stages(tmp_path, LONG))
