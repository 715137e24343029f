"""Benchmark: wall time and peak memory of the whole reproduction (reproduce.py in a child process).

Arguments after the options go to reproduce.py unchanged, e.g.

    python bench/bench_reproduce.py -- --out /tmp/fresh_results --force
"""
import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reproduce_args", nargs=argparse.REMAINDER, help="arguments for reproduce.py (after --)")
    args = parser.parse_args()
    forwarded = [a for a in args.reproduce_args if a != "--"]
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "reproduce.py"), *forwarded], check=True)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    print(f"reproduce.py {' '.join(forwarded)}: {seconds / 60:.1f} minutes wall, peak memory {peak_gib:.2f} GiB (max RSS)")


if __name__ == "__main__":
    main()
