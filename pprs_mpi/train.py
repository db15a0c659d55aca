"""`python -m pprs_mpi.train`: the command line in pprs_mpi.cli.train."""

import sys

from pprs_mpi.cli.train import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
