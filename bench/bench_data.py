"""Benchmark: one epoch over the demo split through the decoded-image cache vs plain ImageFolder + DataLoader.

Both paths yield the same normalised 224 x 224 batches (checked). The plain path decodes,
resizes and crops every image every epoch; the project's path decodes each image once,
keeps the uint8 result on disk under its content hash, reads each batch's images from there
(the OS page cache holds them after the first epoch) and normalises per batch. Per-epoch times
are the median of --epochs epochs of each path (the plain path does the same work every epoch).

    python bench/bench_data.py
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
from bench.tutorial import tutorial_dataset  # noqa: E402
from common.cli import run_main  # noqa: E402
from common.data import load_splits, normalize  # noqa: E402
from common.demo import default_data  # noqa: E402


def plain_epoch(root, batch_size, workers):
    loader = DataLoader(tutorial_dataset(root, "train"), batch_size=batch_size, num_workers=workers)
    return [x for x, _ in loader]


def cached_epoch(split, batch_size):
    return [normalize(x) for x, _ in split.batches(batch_size)]


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def per_epoch(epochs, fn, *args):
    """Median seconds of `epochs` calls, and the last call's output."""
    runs = [timed(fn, *args) for _ in range(epochs)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="split folder (default: the demo split)")
    parser.add_argument("--batch-size", type=int, default=50, help="batch size (default: 50, the report's task 2)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain path (default: 2, one per core here)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs timed per path; the median is shown (default: 5)")
    args = parser.parse_args()
    root = args.data or default_data()
    torch.set_num_threads(torch.get_num_threads())

    plain_time, plain = per_epoch(args.epochs, plain_epoch, root, args.batch_size, args.workers)
    with tempfile.TemporaryDirectory() as cache:
        first_time, data = timed(load_splits, root, cache)  # decodes once, fills the disk cache
        disk_time, data = timed(load_splits, root, cache)   # a later run: reads the disk cache
        epoch_time, cached = per_epoch(args.epochs, cached_epoch, data.train, args.batch_size)
    same = torch.allclose(torch.cat(plain), torch.cat(cached), atol=1e-5)

    print(f"one epoch over {len(data.train)} training images of {root}, batch {args.batch_size} "
          f"(median of {args.epochs} epochs)")
    print(f"{'path':<52}{'seconds':>9}{'speed-up':>10}")
    print(f"{'plain ImageFolder + DataLoader (' + str(args.workers) + ' workers), every epoch':<52}{plain_time:>9.3f}{1:>9.1f}x")
    print(f"{'cache, first run ever (decodes all 3 splits once)':<52}{first_time:>9.3f}{plain_time / first_time:>9.1f}x")
    print(f"{'cache, a later run (reads all 3 splits from disk)':<52}{disk_time:>9.3f}{plain_time / disk_time:>9.1f}x")
    print(f"{'cache, each further epoch (batches read from it)':<52}{epoch_time:>9.3f}{plain_time / epoch_time:>9.1f}x")
    print(f"same batches from both paths: {same}")


if __name__ == "__main__":
    run_main(main)
