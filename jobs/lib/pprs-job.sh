# shellcheck shell=bash
# pprs-job.sh: what the job scripts in jobs/ share, sourced by them (pprs_cpu.slurm, pprs_gpu.slurm,
# sweep.slurm): the settings, the launcher, signal forwarding, the trace's state, resume and requeue.
#
# Settings (environment variables; sbatch hands the submitting shell's environment to the job):
#   PROBLEM=lad        built-in problem (--problem)
#   DEPTH=8            graph depth (--depth); lad and linf have DEPTH nodes, so at most DEPTH ranks
#   ALGO=pprs          pprs, gd or agd (--algo)
#   SEED=0             noise seed
#   K=8 GAMMA=0.01 LR=0.01    noisy samples, smoothing γ, step size η (one run; a sweep has lists)
#   OUT=runs/$PROBLEM-d$DEPTH-$ALGO-K$K-g$GAMMA-lr$LR-s$SEED.h5    the trace of one run, checkpoint
#                      included (pprs_gpu.slurm: ...-gpu.h5)
#   ITERS=200          iterations; a resume passes only an ITERS you set (a larger one extends the run)
#   DEVICE=cpu         --device cpu|gpu|auto (pprs_gpu.slurm: gpu)
#   CHECKPOINT_EVERY=100  also checkpoint every N iterations (0: only on USR1/TERM), for node failures
#   COMM_TIMEOUT=600   abort when a rank waits longer than this many seconds for a message ('': never)
#   PROGRESS_EVERY=    iterations between progress lines ('': the solver's default)
#   EXTRA_ARGS=        more solver flags for a fresh run, split on spaces: "--dim 32 --schedule 1f1b"
#   RANKS=2            ranks of the local mpirun (no Slurm); under Slurm the granted tasks decide
#   PYTHON=python      the interpreter that has pprs_mpi and mpi4py
#   LAUNCHER=          '' = srun under Slurm and mpirun without; or 'srun' or 'mpirun'
#   SRUN_MPI=          srun --mpi=$SRUN_MPI (e.g. pmix) where the site's MpiDefault is not PMIx
#   MPIRUN_ARGS=       extra mpirun arguments, split on spaces
#   SETUP=             a file sourced first (module load ..., conda activate ...)
#   PPRS_CUDA_AWARE=0  exported to the ranks: 1 = MPI takes GPU buffers, 0 = stage them through the
#                      host; set but empty = the solver asks MPI (MPIX_Query_cuda_support)
#
# Requeue and resume: Slurm sends USR1 to the batch shell 120 s before the time limit
# (--signal=B:USR1@120). The solver runs in the background while the shell waits, so the trap fires at
# once and forwards USR1 to the launcher with kill -USR1 (srun and mpirun pass it on to the ranks; never
# TERM, on which Open MPI's mpirun kills the ranks). Rank 0 checkpoints into the trace at the next
# iteration boundary, the solver exits 3 and the script requeues the job (an array task requeues only
# itself: JOBID_TASKID). Slurm holds a requeued job about 2 minutes (Reason=BeginTime) before it starts
# again (same job id, same environment); it finds the checkpoint in the trace and continues with
# --resume instead of starting over; so does a new submission with the same trace, and with a larger
# ITERS it extends a completed run. TERM or INT (scancel, preemption, Ctrl-C) checkpoint too, but do
# not requeue (Slurm requeues a preempted --requeue job itself). scancel signals every process of the
# batch step, mpirun and the ranks included, so the launcher's own exit code then says little: after a
# signal, or when the run wrote a newer checkpoint, the trace decides (interrupted: exit 3). Without
# Slurm the script says it would requeue and exits 3: run it again to resume.
#
# A launcher's exit code alone is never taken as success: Open MPI's mpirun exits 0 when it loses a
# remote daemon (a node failed), with the run cut short. Exit 0 needs a `completed` trace. A run that
# ended otherwise (the launcher failed, or lost ranks) but wrote a newer checkpoint than this attempt
# started from is requeued like a USR1 (under Slurm; without it, exit 3 and the command that resumes);
# one with nothing newer to resume from is a failure (exit 4 after a launcher's 0).
#
# Exit codes: 0 completed, requeued, or nothing left to do; 1 diverged; 2 bad input (the solver's one
# line on stderr); 3 checkpointed and not requeued; 4 the launcher exited 0 but the run did not complete
# and left no newer checkpoint (ranks lost); other: the launcher's failure code.
#
# Launcher: plain `srun` starts one task per rank and connects them through the site's default PMI
# (MpiDefault; Open MPI 5 needs PMIx): set SRUN_MPI=pmix where that is not the default, or
# LAUNCHER=mpirun to let Open MPI's own mpirun start the ranks inside the allocation (it reads the
# Slurm allocation; the batch shell still gets USR1 and forwards it to mpirun). Either way,
# --expect-ranks "$NTASKS" stops a launch whose ranks do not see each other (python started without
# srun/mpirun, or mpi4py built against another MPI than the launcher's).
#
# The sourcing script sets JOB_SCRIPT (its own path: the submitted file, not Slurm's spool copy) first.

# made absolute: sweep.slurm's collect job runs it from wherever its task ran
JOB_SCRIPT="$(cd "$(dirname "$JOB_SCRIPT")" && pwd)/$(basename "$JOB_SCRIPT")"
SCRIPT_NAME=$(basename "$JOB_SCRIPT")
log() { echo "$SCRIPT_NAME: $*" >&2; }

if [[ -n "${SETUP:-}" ]]; then
    # shellcheck source=/dev/null
    source "$SETUP"
fi
ITERS_GIVEN=${ITERS:+yes}  # a resume passes --iters only when ITERS was set
ITERS=${ITERS:-200}
PROBLEM=${PROBLEM:-lad}
DEPTH=${DEPTH:-8}
ALGO=${ALGO:-pprs}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cpu}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-100}
COMM_TIMEOUT=${COMM_TIMEOUT-600}
PROGRESS_EVERY=${PROGRESS_EVERY:-}
EXTRA_ARGS=${EXTRA_ARGS:-}
RANKS=${RANKS:-2}
PYTHON=${PYTHON:-python}
LAUNCHER=${LAUNCHER:-}
SRUN_MPI=${SRUN_MPI:-}
MPIRUN_ARGS=${MPIRUN_ARGS:-}
export PPRS_CUDA_AWARE="${PPRS_CUDA_AWARE-0}"  # unset: 0; set (even empty): passed on as it is
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}"

# The launcher: srun under Slurm (all the tasks Slurm granted), mpirun -n "$RANKS" without Slurm.
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    NTASKS=${SLURM_NTASKS:?SLURM_NTASKS is unset: submit with sbatch --ntasks=N}
    LAUNCHER=${LAUNCHER:-srun}
else
    NTASKS=$RANKS
    LAUNCHER=${LAUNCHER:-mpirun}
    if [[ "$(id -u)" == 0 ]]; then  # Open MPI refuses to run as root unless told otherwise
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    if (( RANKS > $(nproc 2>/dev/null || echo 1) )); then  # more ranks than cores
        export PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe
    fi
fi
case "$LAUNCHER" in
    srun) launch=(srun --ntasks="$NTASKS")
          if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then launch+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
          if [[ -n "$SRUN_MPI" ]]; then launch+=(--mpi="$SRUN_MPI"); fi ;;
    mpirun) read -r -a mpirun_args <<< "$MPIRUN_ARGS"
            launch=(mpirun -n "$NTASKS" ${mpirun_args[@]+"${mpirun_args[@]}"}) ;;
    *) log "LAUNCHER must be srun or mpirun, not '$LAUNCHER'"; exit 2 ;;
esac

# Prints "STATUS CHECKPOINT_ITERATION" of the trace $1: "absent -" without a file, "STATUS -" without
# a checkpoint; returns 2 with a message when $1 exists but is not a readable trace.
trace_state() {
    "$PYTHON" - "$1" <<'PY'
import os, sys
from pprs_mpi.trace import TraceError, load, read_checkpoint
path = sys.argv[1]
if not os.path.exists(path):
    print("absent -")
    sys.exit(0)
try:
    trace = load(path)
    iteration = read_checkpoint(path)[1]["iteration"] if trace.has_checkpoint else "-"
except TraceError as err:
    print(f"not a usable trace: {err}", file=sys.stderr)
    sys.exit(2)
print(trace.status, iteration)
PY
}

# Signals: Slurm's USR1 (--signal=B:USR1@120), scancel's TERM and Ctrl-C's INT all ask the running
# solver to checkpoint and stop. The ranks always get USR1: Open MPI's mpirun kills the job on TERM.
launcher_pid=
signal_seen=
# shellcheck disable=SC2329  # invoked by the traps below
forward() {
    signal_seen=${signal_seen:-$1}
    log "got SIG$1: asking the run to checkpoint and stop"
    if [[ -n "$launcher_pid" ]]; then kill -USR1 "$launcher_pid" 2>/dev/null; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT

# solver_flags K GAMMA LR: the flags of a fresh run of one grid point, into the array `flags`
solver_flags() {
    read -r -a flags <<< "$EXTRA_ARGS"
    flags=(--problem "$PROBLEM" --depth "$DEPTH" --algo "$ALGO" -K "$1" --gamma "$2" --lr "$3" --seed "$SEED"
           --device "$DEVICE" ${flags[@]+"${flags[@]}"})
}

# launch_and_wait: runs "${launch[@]}" "${solver[@]}" in the background, so that the traps fire while
# the shell waits, and returns the launcher's exit code (its own, also when a trap interrupted the wait).
launch_and_wait() {
    local rc again
    "${launch[@]}" "${solver[@]}" &
    launcher_pid=$!
    while true; do
        rc=0
        wait "$launcher_pid" || rc=$?
        if (( rc > 128 )) && kill -0 "$launcher_pid" 2>/dev/null; then
            continue  # a trap interrupted the wait; the run is still checkpointing
        fi
        break
    done
    if (( rc > 128 )) && [[ -n "$signal_seen" ]]; then  # the run ended while the trap ran: its own status
        again=0
        wait "$launcher_pid" 2>/dev/null || again=$?
        if (( again != 127 )); then rc=$again; fi
    fi
    launcher_pid=
    return "$rc"
}

# run_solver OUT [FLAGS...]: resumes the trace OUT from its checkpoint (a requeued job or a resubmission)
# or, when it holds none, starts a fresh run with FLAGS. Returns the solver's exit code: 0 completed
# (or nothing left to do), 1 diverged, 2 bad input, 3 checkpointed and stopped, other: a failure.
run_solver() {
    local out=$1 state status checkpoint rc
    shift
    state=$(trace_state "$out") || return 2
    read -r status checkpoint <<< "$state"
    solver=("$PYTHON" -m pprs_mpi.solve --expect-ranks "$NTASKS" --checkpoint-every "$CHECKPOINT_EVERY")
    if [[ -n "$COMM_TIMEOUT" ]]; then solver+=(--comm-timeout "$COMM_TIMEOUT"); fi
    if [[ -n "$PROGRESS_EVERY" ]]; then solver+=(--progress-every "$PROGRESS_EVERY"); fi
    if [[ "$status" == diverged ]]; then
        log "$out diverged: nothing to resume (remove it, or choose another OUT, to start over)"
        return 1
    fi
    if [[ "$checkpoint" != - ]]; then
        if [[ -n "$ITERS_GIVEN" ]] && (( ITERS <= checkpoint )); then
            if [[ "$status" == completed ]]; then
                log "$out is completed at iteration $checkpoint, ITERS=$ITERS: nothing to do"
                return 0
            fi
            log "$out holds a checkpoint at iteration $checkpoint, past ITERS=$ITERS"
            return 2
        fi
        if [[ "$status" == completed && -z "$ITERS_GIVEN" ]]; then
            log "$out is completed at iteration $checkpoint: nothing to do (set ITERS to extend it)"
            return 0
        fi
        log "resuming $out (status $status) from its checkpoint at iteration $checkpoint with its" \
            "stored configuration (only ITERS and the run settings of this job apply)"
        solver+=(--resume "$out")
        if [[ -n "$ITERS_GIVEN" ]]; then solver+=(--iters "$ITERS"); fi
    else
        solver+=(--iters "$ITERS" --out "$out" "$@")
        if [[ "$status" != absent ]]; then
            log "$out (status $status) holds no checkpoint: starting over"
            solver+=(--overwrite)  # a trace of a run that never checkpointed: nothing in it to resume
        fi
        mkdir -p "$(dirname "$out")"
    fi
    if [[ -n "$signal_seen" ]]; then
        log "SIG$signal_seen came before the run started: not starting it"
        return 3
    fi
    log "job ${SLURM_JOB_ID:-local} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-$(hostname)}:" \
        "${launch[*]} ${solver[*]} (PPRS_CUDA_AWARE=$PPRS_CUDA_AWARE)"
    rc=0
    launch_and_wait || rc=$?
    if (( rc == 0 )) && [[ "$(trace_state "$out" 2>/dev/null)" != completed* ]]; then
        read -r status _ <<< "$(trace_state "$out" 2>/dev/null)"
        log "the launcher exited 0 but $out says '${status:-unreadable}', not completed: ranks were lost" \
            "(a node failed, or the launcher lost its daemons)"
        rc=4
    fi
    if (( rc != 0 && rc != 3 )) && checkpointed_now "$out" "$checkpoint"; then rc=3; fi
    return "$rc"
}

# checkpointed_now OUT BEFORE: whether the run just ended left a checkpoint in OUT to resume from: interrupted
# after a signal (scancel TERMs mpirun too, which then exits 1), or interrupted or cut short (still
# 'running': the writer was killed, a node lost) at a checkpoint newer than BEFORE ('-': none).
checkpointed_now() {
    local status checkpoint
    read -r status checkpoint <<< "$(trace_state "$1" 2>/dev/null)"
    [[ "$status" == interrupted || "$status" == running ]] && [[ "$checkpoint" != - ]] || return 1
    [[ "$status" == interrupted && -n "$signal_seen" ]] || [[ "$2" == - ]] || (( checkpoint > $2 ))
}

# requeue_target: the job to requeue; an array task is JOBID_TASKID, since the highest task's
# SLURM_JOB_ID is the whole array's id and requeueing that would requeue (and kill) every task
requeue_target() {
    if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
        echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    else
        echo "$SLURM_JOB_ID"
    fi
}

# finish CODE OUT: exits with CODE; after a checkpoint (3) under Slurm, first requeues the job, which
# then resumes from the checkpoint. Not after TERM or INT (scancel, scontrol requeue, Ctrl-C): Slurm
# requeues such a job itself when that is what was asked, and this script must not requeue a cancelled one.
finish() {
    local rc=$1 out=$2 job
    case "$rc" in
        0) log "done: $out (python -m pprs_mpi.report $out)"; exit 0 ;;
        3) ;;
        4) log "$out holds no checkpoint newer than this attempt started from: nothing to requeue; exit 4"; exit 4 ;;
        *) log "the solver exited with code $rc (trace $out)"; exit "$rc" ;;
    esac
    if [[ "$signal_seen" == TERM || "$signal_seen" == INT ]]; then
        if [[ -n "${SLURM_JOB_ID:-}" ]]; then
            log "checkpointed in $out after SIG$signal_seen; not requeueing from here: a job Slurm requeues" \
                "(scontrol requeue, preemption) resumes from this checkpoint, and a new submission with the same" \
                "settings does too; exit 3"
        else
            log "checkpointed in $out after SIG$signal_seen; resume with: $(resume_command "$out"); exit 3"
        fi
        exit 3
    fi
    if [[ -z "${SLURM_JOB_ID:-}" ]]; then
        log "checkpointed in $out; without Slurm there is no job to requeue: would run" \
            "'scontrol requeue \$SLURM_JOB_ID'; resume with: $(resume_command "$out")"
        exit 3
    fi
    job=$(requeue_target)
    log "checkpointed in $out; requeueing job $job, which will resume it (Slurm holds it about 2 min)"
    if scontrol requeue "$job"; then exit 0; fi
    log "scontrol requeue failed: submit again with the same settings to resume"
    exit 3
}

# resume_command OUT: the command that resumes OUT (running this script again with the same settings does too)
resume_command() {
    echo "${launch[*]} $PYTHON -m pprs_mpi.solve --resume $1"
}

# run_one SUFFIX: the one run of pprs_cpu.slurm and pprs_gpu.slurm (SUFFIX ends OUT's default name)
run_one() {
    local k=${K:-8} gamma=${GAMMA:-0.01} lr=${LR:-0.01} out
    out=${OUT:-runs/${PROBLEM}-d${DEPTH}-${ALGO}-K${k}-g${gamma}-lr${lr}-s${SEED}$1.h5}
    solver_flags "$k" "$gamma" "$lr"
    run_solver "$out" "${flags[@]}"
    finish "$?" "$out"
}
