"""A run from its configuration to its Result, the layer under `api.minimize` and the command line.

Modules, each importing only those below it:

    execute.py    run(): set up, then the engine and Algorithm 1 on rank 0; failures end every rank
    console.py    the banner and the closing summary printed for the user
    assemble.py   set_up(): problem, graph agreement, devices, placement, schedule, on every rank
    trace_io.py   the trace on rank 0: open or reopen it, checkpoints, the gathered timeline
    presets.py    --preset: Theorem 3 or 4's parameters
    result.py     Result and RunFailed
"""
