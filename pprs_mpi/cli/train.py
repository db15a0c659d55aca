"""`python -m pprs_mpi.train`: train the AlexNet-style classifier and write its weights file.

    python -m pprs_mpi.train --out digits_cnn.h5 --seed 0

Deterministic for a seed (single-threaded float64 NumPy). Bad input is reported in one line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from pprs_mpi import classifier, datasets

BAD_INPUT = 2


def parser() -> argparse.ArgumentParser:
    """The flags: output file, seed, epochs, batch size, step size and dataset."""
    p = argparse.ArgumentParser(prog="python -m pprs_mpi.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="weights file to write (HDF5, see pprs_mpi.classifier)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and shuffles (default 0)")
    p.add_argument("--epochs", type=int, default=classifier.EPOCHS, help=f"default {classifier.EPOCHS}")
    p.add_argument("--batch-size", type=int, default=classifier.BATCH_SIZE, help=f"default {classifier.BATCH_SIZE}")
    p.add_argument("--lr", type=float, default=classifier.LEARNING_RATE,
                   help=f"Adam step size (default {classifier.LEARNING_RATE:g})")
    p.add_argument("--dataset", choices=datasets.DATASETS, default="digits", help="default digits")
    p.add_argument("--data-dir", default="", help="cifar10: folder of the python batches")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Trains, saves the weights and prints the held-out accuracy; exit 2 on bad input."""
    args = parser().parse_args(argv)
    log = None if args.quiet else (
        lambda epoch, loss, acc: print(f"epoch {epoch:>3}  loss {loss:.4f}  held-out accuracy {acc:.4f}", flush=True))
    start = time.perf_counter()
    try:
        split = datasets.load(args.dataset, args.data_dir)
        network = classifier.train(split, args.seed, args.epochs, args.batch_size, args.lr, log)
        classifier.save_network(network, args.out)
    except (ValueError, OSError) as err:
        print(f"pprs_mpi.train: error: {err}", file=sys.stderr)
        return BAD_INPUT
    print(f"held-out accuracy {network.meta['held_out_accuracy']:.4f} ({len(split.test_labels)} images) "
          f"after {time.perf_counter() - start:.1f} s; wrote {args.out}", flush=True)
    return 0
