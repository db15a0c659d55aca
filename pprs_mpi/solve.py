"""`python -m pprs_mpi.solve`: the command line in pprs_mpi.cli.solve."""

import sys

from pprs_mpi.cli.solve import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
