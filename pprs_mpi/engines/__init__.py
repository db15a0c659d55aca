"""Engines execute one pipeline schedule and return the mean of K noisy gradients to rank 0."""
