"""pprs_mpi: Pipeline Parallel Random Smoothing across MPI ranks and GPUs."""

__version__ = "0.1.0"
