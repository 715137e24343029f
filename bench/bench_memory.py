"""Benchmark: peak memory of a big folder, the decoded images on disk (this checkout) against in memory.

Generates a class folder of small pictures (7 classes; they are decoded to 224 x 224 either way),
then, each as a whole process with its own decoded-image cache, runs `data_split.py` and one epoch
of `task2_shallow.py` on it and prints the peak RSS and wall time of each. The in-memory version
is `git archive` of --baseline (default: 425ccb5, the last commit that stacked every split into one
tensor). Both versions run at the small size, and their test metrics must be equal; only this
checkout runs at the large size (the in-memory one would need 2 x 4.5 GB at 30,000 images).

    python bench/bench_memory.py                         # 2,000 images both ways, 30,000 this checkout
    python bench/bench_memory.py --small 500 --large 0   # a quick look
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
from bench.timing import timed  # noqa: E402
from common.baseline import checkout  # noqa: E402
from common.cli import UserError, run_main  # noqa: E402
from common.runtime import cpu_flags  # noqa: E402

CLASSES = 7


def make_folder(folder, n, seed=0):
    """n small JPEGs in CLASSES class folders: noise around a colour per class, so there is something to learn."""
    if (folder / "done").exists() and int((folder / "done").read_text()) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (CLASSES, 3))
    for i in range(n):
        label = i % CLASSES
        pixels = np.clip(colours[label] + rng.normal(0, 60, (48, 64, 3)), 0, 255).astype(np.uint8)
        path = folder / f"class{label}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
    (folder / "done").write_text(str(n))
    return folder


def measure(code, images, work, epochs):
    """data_split.py and one task 2 run of the checkout `code`: wall seconds, peak MiB and test metrics."""
    env = {**os.environ, "REPRO_CACHE_DIR": str(work / "cache")}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    split_s, split_mib = timed([sys.executable, "data_split.py", str(images), str(work / "split")], code, env)
    train_s, train_mib = timed([sys.executable, "task2_shallow.py", "--data", str(work / "split"), "--out",
                                str(work / "run"), "--epochs", str(epochs)], code, env)
    metrics = json.loads((work / "run" / "metrics.json").read_text())["test"]
    return {"split": (split_s, split_mib), "train": (train_s, train_mib), "test": metrics}


def row(name, n, result):
    (split_s, split_mib), (train_s, train_mib) = result["split"], result["train"]
    test = result["test"]
    return (f"| {name} | {n:,} | {split_mib / 1024:.2f} GiB ({split_s:.0f} s) | {train_mib / 1024:.2f} GiB "
            f"({train_s:.0f} s) | {test['top1']:.2f} % / {test['loss']:.4f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2000, help="images run by both versions (default: 2000)")
    parser.add_argument("--large", type=int, default=30000, help="images run by this checkout only; 0 skips (default: 30000)")
    parser.add_argument("--epochs", type=int, default=1, help="task 2 epochs per run (default: 1)")
    parser.add_argument("--baseline", default="425ccb5", help="the in-memory commit (default: 425ccb5)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_memory"),
                        help="generated folders, splits, caches and runs; the images are kept for the next time "
                             "(default: /tmp/bench_memory); about 160 KB per image")
    args = parser.parse_args()
    if args.small < CLASSES * 10 or (args.large and args.large < CLASSES * 10):
        raise UserError(f"--small and --large need at least {CLASSES * 10} images (10 per class)")
    args.work.mkdir(parents=True, exist_ok=True)
    old = args.work / "in_memory_code"
    shutil.rmtree(old, ignore_errors=True)
    checkout(REPO, args.baseline, old)
    print(f"{os.cpu_count()} CPUs, flags: {cpu_flags()}; task 2, {args.epochs} epoch(s), default options; "
          f"peak RSS of each whole process (wall time)\n")
    small = make_folder(args.work / f"images_{args.small}", args.small)
    before = measure(old, small, args.work / "small_in_memory", args.epochs)
    after = measure(REPO, small, args.work / "small_on_disk", args.epochs)
    lines = ["| decoded images | images | data_split.py | task2_shallow.py | test top-1 / logloss |",
             "|---|---:|---:|---:|---:|",
             row(f"in memory ({args.baseline})", args.small, before), row("on disk (this checkout)", args.small, after)]
    if args.large:
        large = make_folder(args.work / f"images_{args.large}", args.large)
        lines.append(row("on disk (this checkout)", args.large, measure(REPO, large, args.work / "large_on_disk", args.epochs)))
        shutil.rmtree(args.work / "large_on_disk" / "cache")  # gigabytes
    print("\n".join(lines))
    print(f"\nsame test metrics at {args.small:,} images, in memory and on disk: {before['test'] == after['test']}")
    if before["test"] != after["test"]:
        raise UserError("the two versions' test metrics differ")


if __name__ == "__main__":
    run_main(main)
