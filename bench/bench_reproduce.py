"""Benchmark: wall time and peak memory of the whole reproduction (reproduce.py in a child process).

With no --compare, arguments after `--` go to reproduce.py unchanged and it runs once:

    python bench/bench_reproduce.py -- --out /tmp/fresh_results --force

With --compare it runs twice, side by side in one benchmark run, each time on empty caches (a new
decoded-image and feature cache, REPRO_CACHE_DIR, and a new torch.compile cache,
TORCHINDUCTOR_CACHE_DIR) into a new results folder, as on a fresh clone: the default design
(5-fold cross-validation, one repetition) against one split over 3 seeds (--folds 1 --seeds 3):

    python bench/bench_reproduce.py --compare
    python bench/bench_reproduce.py --compare --keep OUT -- --jobs 2   # both with --jobs 2; results kept in OUT
"""
import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
from common.runtime import cpu_flags  # noqa: E402

DESIGNS = {"cross_validated": ("5-fold cross-validation, 1 repetition (default)", []),
           "one_split": ("one split, 3 seeds (--folds 1 --seeds 3)", ["--folds", "1", "--seeds", "3"])}


def reproduce(arguments, env=None):
    """(wall minutes, peak RSS in GiB of the largest process) of reproduce.py with `arguments`."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "reproduce.py"), *arguments], check=True, env=env)
    minutes = (time.perf_counter() - start) / 60
    return minutes, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux


def on_empty_caches(arguments, scratch, out):
    """reproduce.py with `arguments` into the new folder `out` as on a fresh clone: every cache new, in `scratch`."""
    for name in ("cache", "inductor"):
        (scratch / name).mkdir()
    env = {**os.environ, "REPRO_CACHE_DIR": str(scratch / "cache"), "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor")}
    return reproduce(["--out", str(out), *arguments], env)


def compare(forwarded, keep):
    print(f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), flags: {cpu_flags()}")
    rows = []
    for name, (design, arguments) in DESIGNS.items():
        with tempfile.TemporaryDirectory(prefix="bench_reproduce_") as scratch:
            out = keep / name if keep else Path(scratch) / "out"
            minutes, _ = on_empty_caches([*arguments, *forwarded], Path(scratch), out)
        rows.append((design, minutes))
        print(f"{design}: {minutes:.1f} minutes", flush=True)
    print("\n| design | wall time on empty caches | ratio |\n|---|---:|---:|")
    for design, minutes in rows:
        print(f"| {design} | {minutes:.1f} min | {minutes / rows[-1][1]:.2f}x |")
    print(f"\nreproduce.py arguments of both: {' '.join(forwarded) or '(none)'}; peak memory of the largest process: "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.2f} GiB (max RSS)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="store_true",
                        help="run the default cross-validation and one split over 3 seeds, each on empty caches")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="with --compare: keep each design's results folder in DIR/cross_validated and "
                             "DIR/one_split, which must not exist yet (default: deleted with the caches)")
    parser.add_argument("reproduce_args", nargs=argparse.REMAINDER, help="arguments for reproduce.py (after --)")
    args = parser.parse_args()
    forwarded = [a for a in args.reproduce_args if a != "--"]
    if args.keep and any((args.keep / name).exists() for name in DESIGNS):
        parser.error(f"--keep {args.keep} already holds results: give a new folder")
    if args.compare:
        return compare(forwarded, args.keep)
    minutes, peak = reproduce(forwarded)
    print(f"reproduce.py {' '.join(forwarded)}: {minutes:.1f} minutes wall, peak memory {peak:.2f} GiB (max RSS)")


if __name__ == "__main__":
    main()
