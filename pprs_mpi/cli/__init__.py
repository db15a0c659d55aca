"""The command lines: each turns argv into a call of the library and its outcome into lines and an exit
code (0 done, 1 failed or diverged, 2 bad input, in one line). Nothing in the library imports them.

    solve.py    python -m pprs_mpi.solve    run one solve (pprs_mpi.run)
    check.py    python -m pprs_mpi.check    check a problem's VJPs (pprs_mpi.check)
    report.py   python -m pprs_mpi.report   summarise, plot or follow traces (pprs_mpi.report)
    theory.py   python -m pprs_mpi.theory   the theorems' bounds and presets (pprs_mpi.theory)
    train.py    python -m pprs_mpi.train    train the shipped classifier (pprs_mpi.classifier)
"""
