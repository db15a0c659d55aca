"""The job scripts in jobs/ under a real single-node Slurm (tests/slurm/cluster.sh).

The cluster is the one `.ci/run` started (found through $PPRS_SLURM_DIR, default /tmp/pprs-slurm), or
else one these tests start and stop themselves where the Slurm packages are installed and we are root.
Elsewhere (a laptop without Slurm) the tests skip with the reason; with PPRS_REQUIRE_SLURM=1 (CI)
they fail instead. Slurm holds a requeued job about 2 minutes (BeginTime): the tests start it at once
with `scontrol update JobId=.. StartTime=now`. Every wait has a deadline.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MPI_ENV
from pprs_mpi.solve import main
from pprs_mpi.trace import TraceError, load, read_checkpoint

pytestmark = [pytest.mark.slurm, pytest.mark.mpi]

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE"}
PROBLEM = {"PROBLEM": "lad", "DEPTH": "4", "K": "8", "GAMMA": "0.01", "LR": "0.01", "SEED": "0"}
LONG = 2000  # iterations of a run that is signalled while it goes (2 to 6 s on 2 ranks)


def _cluster(command, directory):
    return subprocess.run(["bash", str(CLUSTER), command], env={**os.environ, "PPRS_SLURM_DIR": str(directory)},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    """SLURM_CONF of a running test cluster: the shared one, or one started here and stopped after."""
    shared = Path(os.environ.get("PPRS_SLURM_DIR", "/tmp/pprs-slurm"))
    if _cluster("status", shared).returncode == 0:
        yield str(shared / "slurm.conf")
        return
    own = tmp_path_factory.mktemp("slurm")
    started = _cluster("start", own) if shutil.which("slurmctld") and os.geteuid() == 0 else None
    if started is None or started.returncode != 0:
        reason = ("no Slurm: tests/slurm/cluster.sh install && tests/slurm/cluster.sh start" if started is None
                  else f"tests/slurm/cluster.sh start failed: {started.stderr.strip()}")
        if os.environ.get("PPRS_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield str(own / "slurm.conf")
    finally:
        _cluster("stop", own)


@pytest.fixture
def cluster(slurm_conf, tmp_path):
    """A client of the test cluster working in tmp_path; cancels the jobs it submitted at the end."""
    client = Client(slurm_conf, tmp_path)
    yield client
    if client.jobs:
        client.command("scancel", *client.jobs, check=False)


class Client:
    """sbatch, scontrol and scancel against the test cluster, with the job scripts' environment; `via`: the
    command they run through (the two-node cluster's DIR/client, which enters the controller's namespace)."""

    def __init__(self, slurm_conf, workdir: Path, via=()):
        self.workdir, self.jobs, self.via = workdir, [], [str(part) for part in via]
        self.env = {name: value for name, value in os.environ.items() if not name.startswith(("SLURM_", "SBATCH_"))}
        self.env.update(MPI_ENV, SLURM_CONF=slurm_conf, PYTHON=sys.executable, PROGRESS_EVERY="1000000",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    def command(self, *args, check=True, env=None):
        result = subprocess.run([*self.via, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                                timeout=60, cwd=self.workdir)
        assert result.returncode == 0 or not check, f"{args}: {result.stderr}"
        return result

    def sbatch(self, script, *options, **settings):
        """Submits jobs/SCRIPT with the settings in its environment; returns the job id."""
        result = self.command("sbatch", "--parsable", f"--chdir={self.workdir}", *options, str(JOBS / script),
                              env={name: str(value) for name, value in settings.items()})
        job = result.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job

    def records(self, job):
        """scontrol's fields of JOB (one dict per array task), by array task id ('-' for a plain job)."""
        result = self.command("scontrol", "show", "job", "-o", job)
        records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in result.stdout.splitlines() if line.strip()]
        return {record.get("ArrayTaskId", "-"): record for record in records}

    def wait(self, job, until, timeout=120.0):
        """Polls JOB's records until until(records) holds. A requeued task that Slurm holds (BeginTime, about
        2 min) is started 2 s on: slurmd refuses ('credential revoked') a start in the second of the requeue."""
        deadline, released = time.monotonic() + timeout, set()
        while time.monotonic() < deadline:
            records = self.records(job)
            for record in records.values():
                attempt = (record["JobId"], record["Restarts"])
                if record["JobState"] == "PENDING" and record.get("Reason") == "BeginTime" and attempt not in released:
                    self.command("scontrol", "update", f"JobId={record['JobId']}", "StartTime=now+2", check=False)
                    released.add(attempt)
            if until(records):
                return records
            time.sleep(0.5)
        raise AssertionError(f"job {job} did not get there in {timeout} s: {self.records(job)}")

    def wait_done(self, job, timeout=120.0):
        return self.wait(job, lambda records: all(r["JobState"] in DONE for r in records.values()), timeout)

    def log(self, pattern):
        return "\n".join(path.read_text() for path in sorted(self.workdir.glob(pattern)))


def wait_for_rows(trace: Path, rows=20, timeout=60.0):
    """Waits until the run writing TRACE has flushed ROWS rows (it is going)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if trace.exists() and load(trace).n_rows >= rows:
                return
        except TraceError:
            pass  # being created, or locked by the writer for a moment
        time.sleep(0.2)
    raise AssertionError(f"{trace} got no {rows} rows in {timeout} s")


def uninterrupted(tmp_path, iters, **settings):
    """The reference: the same run on the serial engine, in this process, never stopped."""
    point = {**PROBLEM, **settings}
    out = tmp_path / f"reference-{point['LR']}-{point['K']}.h5"
    assert main(["--problem", point["PROBLEM"], "--depth", point["DEPTH"], "-K", point["K"], "--gamma",
                 point["GAMMA"], "--lr", point["LR"], "--seed", point["SEED"], "--iters", str(iters),
                 "--engine", "serial", "--quiet", "--out", str(out)]) == 0
    return load(out)


def same_iterates(a, b):
    return (np.array_equal(a.result["x"], b.result["x"]) and np.array_equal(a.result["y"], b.result["y"])
            and np.array_equal(a.columns["iteration"], b.columns["iteration"])
            and np.array_equal(a.columns["f_smoothed"], b.columns["f_smoothed"], equal_nan=True))


def test_cpu_job_with_mpirun_and_with_srun_pmix_ends_where_the_serial_engine_ends(cluster, tmp_path):
    runs = {"mpirun": {"LAUNCHER": "mpirun"}, "pmix": {"SRUN_MPI": "pmix"}}
    jobs = {name: cluster.sbatch("pprs_cpu.slurm", "--ntasks=2", ITERS=200, OUT=tmp_path / f"{name}.h5",
                                 **PROBLEM, **launch) for name, launch in runs.items()}
    reference = uninterrupted(tmp_path, 200)
    for name, job in jobs.items():
        record = cluster.wait_done(job)["-"]
        text = cluster.log(f"*-{job}.out")
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), text
        assert ("mpirun -n 2" if name == "mpirun" else "srun --ntasks=2 --cpus-per-task=1 --mpi=pmix") in text
        trace = load(tmp_path / f"{name}.h5")
        assert trace.status == "completed" and trace.attrs["ranks"] == 2
        assert same_iterates(trace, reference), name


def test_gpu_job_header_fits_a_small_node(cluster, tmp_path):
    """The header's defaults (2 tasks x 2 CPUs x 1 GPU) on the test node: 4 CPUs, 2 stand-in GPUs (no CUDA
    behind them, so the ranks compute on the CPU and end bitwise where the serial engine ends)."""
    out = tmp_path / "gpu.h5"
    job = cluster.sbatch("pprs_gpu.slurm", ITERS=50, OUT=out, DEVICE="cpu", SRUN_MPI="pmix", **PROBLEM)
    record = cluster.wait_done(job)["-"]
    text = cluster.log(f"*-{job}.out")
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), text
    assert "GPUs of the job: 0,1" in text and "srun --ntasks=2 --cpus-per-task=2" in text
    assert same_iterates(load(out), uninterrupted(tmp_path, 50))


def test_usr1_requeues_the_job_and_it_resumes_bitwise(cluster, tmp_path):
    """scancel -b -s USR1 is what --signal=B:USR1@120 sends before the time limit."""
    out = tmp_path / "run.h5"
    job = cluster.sbatch("pprs_cpu.slurm", "--ntasks=2", ITERS=LONG, OUT=out, SRUN_MPI="pmix", **PROBLEM)
    wait_for_rows(out)
    cluster.command("scancel", "--batch", "--signal=USR1", job)
    record = cluster.wait_done(job, timeout=180)["-"]
    text = cluster.log(f"*-{job}.out")
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), text
    assert f"requeueing job {job}" in text and "resuming" in text and "--resume" in text
    trace = load(out)
    assert trace.status == "completed" and trace.attrs["resumes"] == 1
    assert same_iterates(trace, uninterrupted(tmp_path, LONG))


def test_scancel_with_mpirun_checkpoints_and_exits_3(cluster, tmp_path):
    """scancel sends TERM to every process of the batch step, mpirun included (bug 2: reported as diverged)."""
    out = tmp_path / "run.h5"
    job = cluster.sbatch("pprs_cpu.slurm", "--ntasks=2", ITERS=10_000_000, OUT=out, LAUNCHER="mpirun", **PROBLEM)
    wait_for_rows(out)
    cluster.command("scancel", job)
    record = cluster.wait_done(job)["-"]
    text = cluster.log(f"*-{job}.out")
    assert (record["JobState"], record["ExitCode"]) == ("CANCELLED", "3:0"), text
    assert "checkpointed in" in text and "not requeueing" in text and "diverged" not in text
    trace = load(out)
    assert trace.status == "interrupted" and trace.has_checkpoint
    assert read_checkpoint(out)[1]["iteration"] == trace.columns["iteration"][-1]


def test_sweep_task_requeues_itself_and_the_other_tasks_finish_untouched(cluster, tmp_path):
    """Bug 1: the highest array task's SLURM_JOB_ID is the array's id, and requeueing it took all tasks."""
    sweep = tmp_path / "sweep"
    grid = {"LRS": "0.01 0.02", "GAMMAS": "0.01", "KS": "4", "SWEEP_DIR": sweep, "ITERS": LONG,
            "SRUN_MPI": "pmix", "DEPTH": "4", "COLLECT_JOB": "0"}
    submitted = cluster.command("bash", str(JOBS / "sweep.slurm"), "submit", "--parsable", "--ntasks=2",
                                f"--chdir={tmp_path}", env={name: str(value) for name, value in grid.items()})
    array = submitted.stdout.strip().split(";")[0]
    cluster.jobs.append(array)
    assert set(cluster.records(array)) <= {"0-1", "0", "1"}  # --array=0-1 from the 2-point grid
    traces = [sweep / "lr0.01-g0.01-K4.h5", sweep / "lr0.02-g0.01-K4.h5"]
    for trace in traces:
        wait_for_rows(trace)
    cluster.command("scancel", "--batch", "--signal=USR1", f"{array}_1")  # the highest task
    assert load(traces[0]).status == "running", "task 0 ended before task 1 was requeued: raise LONG"
    records = cluster.wait(array, lambda r: set(r) == {"0", "1"} and all(x["JobState"] in DONE for x in r.values()),
                           timeout=180)
    logs = {task: cluster.log(f"*-{array}_{task}.out") for task in ("0", "1")}
    assert [records[task]["Restarts"] for task in ("0", "1")] == ["0", "1"], logs
    assert all(records[task]["ExitCode"] == "0:0" for task in ("0", "1")), logs
    assert "got SIG" not in logs["0"] and f"requeueing job {array}_1" in logs["1"]
    untouched, requeued = load(traces[0]), load(traces[1])
    assert untouched.status == "completed" and untouched.attrs["resumes"] == 0
    assert requeued.status == "completed" and requeued.attrs["resumes"] == 1
    assert same_iterates(untouched, uninterrupted(tmp_path, LONG, LR="0.01", K="4"))
    assert same_iterates(requeued, uninterrupted(tmp_path, LONG, LR="0.02", K="4"))
