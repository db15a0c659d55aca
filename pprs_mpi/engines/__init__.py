"""Engines execute one pipeline schedule and return the mean of K noisy gradients to rank 0.

Modules, and the direction of their imports (each imports only those below it; none imports the
trace, the report or the solver, which import from here):

    factory.py          which engine runs a placement (`make_engine`, `engine_for`), and `place`
    serial.py, mpi.py   the engines: every stage in one process, or one stage per MPI rank
    runner.py           one stage's pass: its plan executed over a transport; stage 0's RootRole
    transport.py        the Transport a runner talks to, and the serial engine's in-process mailbox
    plan.py             each stage's pass compiled once from the Schedule: slots, channels, steps, segments
    stage.py            the static facts: Wiring (placement) and Sampling (noisy copies)
    timeline.py         phase codes, TIMELINE_DTYPE, per-rank memory keys, the Timeline recorder

Outside this package they use schedule, graph, backend (Staging), noise and faults.
"""
