"""Benchmark: task 2 through the project's path vs the same model in a plain tutorial loop.

Side by side, same seed, same epochs, same batch order and dropout draws:
  plain    ImageFolder + DataLoader decoding every image every epoch, fp32, NCHW, the plain layers
           (no space-to-depth convolution), torch's default Adam
  project  the task's script: the decoded-image cache, channels-last, the space-to-depth convolution,
           torch.compile, fused Adam, in fp32 and with --precision auto
Each variant runs in its own process so that its peak memory (max RSS) is its own.
Fewer epochs than the task's 100 keep the run short; the time per epoch is what matters.

    python bench/bench_task2.py --epochs 3
"""
import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
from bench.timing import in_fresh_process  # noqa: E402
from bench.tutorial import tutorial_dataset, tutorial_evaluate  # noqa: E402
from common.demo import default_data  # noqa: E402
from common.models import ShallowConvNet, with_plain_layers  # noqa: E402
from common.train import seed_everything  # noqa: E402

BATCH = 50


def plain_loader(root, split, order=None):
    dataset = tutorial_dataset(root, split)
    batches = order.split(BATCH) if order is not None else torch.arange(len(dataset)).split(BATCH)
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=2)


def run_plain(root, epochs, seed):
    """The usual tutorial loop, shuffled in the same order as the project's loop."""
    seed_everything(seed)
    train = ImageFolder(str(root / "train"))  # file list only: the loaders below decode
    model = with_plain_layers(ShallowConvNet(len(train.classes)))  # the usual nn.Sequential layers
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    generator = torch.Generator().manual_seed(seed)
    n = len(train)
    for _ in range(epochs):
        model.train()
        for x, y in plain_loader(root, "train", torch.randperm(n, generator=generator)):
            loss = F.nll_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        tutorial_evaluate(model, plain_loader(root, "validation"))
        scheduler.step()
    return {s: tutorial_evaluate(model, plain_loader(root, s)) for s in ("train", "validation", "test")}


def run_project(root, epochs, seed, precision):
    import task2_shallow
    with tempfile.TemporaryDirectory() as out:
        task2_shallow.main(["--data", str(root), "--out", out, "--epochs", str(epochs),
                            "--seed", str(seed), "--precision", precision])
        return json.loads((Path(out) / "metrics.json").read_text())


def measure(variant, root, epochs, seed):
    """Run one variant here and print its result as JSON (called in a child process)."""
    start = time.perf_counter()
    if variant == "plain":
        metrics = run_plain(root, epochs, seed)
    else:
        metrics = run_project(root, epochs, seed, variant.split("-")[1])
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "metrics": metrics}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per variant (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed shared by all variants (default: 0)")
    parser.add_argument("--data", type=Path, default=None, help="split folder (default: the demo split)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args()
    root = args.data or default_data()
    if args.variant:
        return measure(args.variant, root, args.epochs, args.seed)

    variants = ("plain", "project-fp32", "project-auto")
    found = {variant: in_fresh_process(__file__, ["--variant", variant, "--data", str(root), "--epochs",
                                                  str(args.epochs), "--seed", str(args.seed)])
             for variant in variants}

    plain = found["plain"]["seconds"]
    print(f"task 2, {args.epochs} epochs on {root} (seed {args.seed}), each variant in a fresh process")
    print(f"{'variant':<14}{'seconds':>9}{'speed-up':>10}{'peak MiB':>10}   test logloss / top-1 / top-3")
    for variant in variants:
        r = found[variant]
        t = r["metrics"]["test"]
        print(f"{variant:<14}{r['seconds']:>9.1f}{plain / r['seconds']:>9.1f}x{r['peak_mib']:>10.0f}"
              f"   {t['loss']:.4f} / {t['top1']:.2f} % / {t['top3']:.2f} %")
    a, b = found["plain"]["metrics"], found["project-fp32"]["metrics"]
    gap = max(abs(a[s][k] - b[s][k]) for s in a for k in ("top1", "top3"))
    print(f"plain vs project-fp32: largest accuracy difference over all splits {gap:.2f} points")


if __name__ == "__main__":
    main()
