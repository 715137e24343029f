"""Benchmark: tasks 2 and 3 per seed, this checkout against an earlier commit, side by side.

For each task and precision both versions train the same seed on the same data for the same
epochs, each as a whole `python taskN_*.py` process, one after the other; printed: wall time,
the speed-up, compilation time, peak memory (max RSS), how much slower the last 20 epochs ran
than epochs 2-21 (floats decaying towards zero slow x86 CPUs down; see common/cli.py
flush_denormals) and the test metrics of both. The earlier
version comes from `git archive` of --baseline (default: 6b1acb2, before the allocator fix and
torch.compile). The decoded-image cache is filled first, so neither side pays for decoding.

Compilation time is what the first epoch took beyond the median epoch (compiling the training
graph, then the evaluation graph); it is part of the per-seed time. --cold gives the new version an
empty inductor cache, as on a new machine, and then runs it once more on the cache that run filled,
as every later seed and run does: both per-seed figures are printed.

    python bench/bench_speed.py                          # both tasks, fp32 and auto, 100 epochs
    python bench/bench_speed.py --tasks task2_shallow --precisions fp32 --epochs 10
"""
import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
import tasks  # noqa: E402
from bench.timing import epoch_seconds, timed  # noqa: E402
from common.baseline import COMPARED_TASKS, checkout  # noqa: E402
from common.data import load_splits  # noqa: E402
from common.demo import default_data  # noqa: E402
from common.options import as_argv  # noqa: E402
from common.runtime import cpu_flags  # noqa: E402


def late_slowdown(seconds):
    """Median of the last 20 epochs over the median of epochs 2-21 (epoch 1 compiles)."""
    return statistics.median(seconds[-20:]) / statistics.median(seconds[1:21]) if len(seconds) >= 41 else math.nan


def compile_seconds(seconds):
    """First epoch beyond the median epoch: the one-off cost of compiling."""
    return max(0.0, seconds[0] - statistics.median(seconds[1:])) if len(seconds) > 1 else 0.0


def run(version, code, task, precision, args, scratch, env):
    out = scratch / f"{version.replace(' ', '-')}-{task}-{precision}"
    command = [sys.executable, str(code / f"{task}.py"), "--data", str(args.data), "--out", str(out),
               "--epochs", str(args.epochs), "--seed", str(args.seed), "--precision", precision, *as_argv(**tasks.load(task).reproduce_with)]
    run_env = dict(env)
    if version != "old" and args.cold:  # the cold run fills it, the warm one reuses it
        run_env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / f"inductor-{task}-{precision}")
    seconds, peak = timed(command, code, run_env)
    epochs = epoch_seconds(out)
    return {"seconds": seconds, "peak_mib": peak, "compile": compile_seconds(epochs), "late": late_slowdown(epochs),
            "test": json.loads((out / "metrics.json").read_text())["test"],
            "config": json.loads((out / "config.json").read_text())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(COMPARED_TASKS), default=list(COMPARED_TASKS))
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "auto"), default=["fp32", "auto"])
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run (default: 100, the tasks' own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    parser.add_argument("--data", type=Path, default=None, help="split folder (default: the demo split)")
    parser.add_argument("--baseline", default="6b1acb2", help="the earlier commit (default: 6b1acb2)")
    parser.add_argument("--cold", action="store_true",
                        help="run the new version twice: on an empty inductor cache, then on the one it filled")
    args = parser.parse_args()
    args.data = (args.data or default_data()).resolve()
    print(f"{os.cpu_count()} CPUs, flags: {cpu_flags()}; data {args.data}; {args.epochs} epochs, seed {args.seed}; "
          f"baseline {args.baseline}; inductor cache {'cold' if args.cold else 'warm after the first run'}")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        env = {**os.environ, "REPRO_CACHE_DIR": str(scratch / "cache")}
        load_splits(args.data, scratch / "cache")  # decode once, for both versions
        old_code = checkout(REPO, args.baseline, scratch / "baseline")
        print(f"{'task':<15}{'precision':<20}{'version':<11}{'seconds':>8}{'speed-up':>9}{'compile s':>10}"
              f"{'peak MiB':>9}{'late/early':>11}   test top-1 / logloss", flush=True)
        versions = [("old", old_code)] + ([("new cold", REPO), ("new warm", REPO)] if args.cold else [("new", REPO)])
        for task in args.tasks:
            for precision in args.precisions:
                for version, code in versions:
                    result = run(version, code, task, precision, args, scratch, env)
                    if version == "old":  # the first: every speed-up is against it
                        old = result
                    resolved = result["config"]["precision"] + ("" if result["config"].get("compiled") else ", eager")
                    print(f"{task:<15}{precision + ' (' + resolved + ')':<20}{version:<11}{result['seconds']:>8.1f}"
                          f"{old['seconds'] / result['seconds']:>8.2f}x{result['compile']:>10.1f}{result['peak_mib']:>9.0f}"
                          f"{result['late']:>10.2f}x   {result['test']['top1']:.2f} % / {result['test']['loss']:.4f}",
                          flush=True)


if __name__ == "__main__":
    main()
