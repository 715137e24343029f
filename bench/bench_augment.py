"""Benchmark: what --augment costs, side by side in one run.

Tasks 2 and 3: the median epoch time (epoch 1, which compiles, left out) of the same seed without
and with --augment, each run a whole process. Task 1 (EfficientNet-Lite0, real ImageNet weights,
20 epochs): the whole run frozen and frozen with --augment (features of 10 augmented views per
training image), with an empty feature cache each time. The decoded-image cache is filled first.
(What --finetune costs: its history.csv has the seconds of every epoch.)

    python bench/bench_augment.py                       # tasks 2 and 3 for 6 epochs; task 1 for 20
    python bench/bench_augment.py --skip-task1 --epochs 10
"""
import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
from bench.timing import epoch_seconds, timed  # noqa: E402
from common.data import load_splits  # noqa: E402
from common.demo import default_data  # noqa: E402
from common.runtime import cpu_flags  # noqa: E402


def run(script, argv, out, env):
    """Whole-process wall seconds and the per-epoch seconds of one run."""
    seconds, _ = timed([sys.executable, str(REPO / script), "--out", str(out), *argv], REPO, env)
    return seconds, epoch_seconds(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the task 2 and 3 runs (default: 6)")
    parser.add_argument("--skip-task1", action="store_true", help="leave out the EfficientNet-Lite0 runs")
    args = parser.parse_args()
    data = default_data().resolve()
    print(f"{os.cpu_count()} CPUs, flags: {cpu_flags()}; data {data}; seed 0, --precision auto")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "REPRO_CACHE_DIR": f"{tmp}/cache"}
        load_splits(data, Path(tmp) / "cache")
        common = ["--data", str(data), "--seed", "0"]
        for script, extra in (("task2_shallow.py", []), ("task3_netvlad.py", ["--clusters", "16"])):
            medians = []
            for augment in ([], ["--augment"]):
                _, epochs = run(script, [*common, *extra, *augment, "--epochs", str(args.epochs)],
                                Path(tmp) / f"{script}{augment}", env)
                medians.append(statistics.median(epochs[1:]))
            print(f"{script:<18} median epoch: {medians[0]:.3f} s without --augment, {medians[1]:.3f} s with: "
                  f"+{100 * (medians[1] / medians[0] - 1):.0f} %", flush=True)
        if not args.skip_task1:
            for i, (label, extra) in enumerate((("frozen", []), ("frozen, --augment", ["--augment"]))):
                cache = Path(tmp) / f"cache-task1-{i}"  # decoded images only: each run computes its features
                load_splits(data, cache)
                seconds, epochs = run("task1_efficientnet.py", [*common, *extra], Path(tmp) / f"task1-{i}",
                                      {**env, "REPRO_CACHE_DIR": str(cache)})
                print(f"task1_efficientnet {label:<18} whole run {seconds:7.1f} s, median epoch "
                      f"{statistics.median(epochs):.2f} s", flush=True)


if __name__ == "__main__":
    main()
