"""Benchmark: task 1 through the project's cached features vs the usual tutorial loop.

Side by side, same data, seed and epochs (20, batch 100, the report's task 1):
  tutorial  ImageFolder + DataLoader, the frozen backbone + head forward on every image in every
            epoch, fp32 (the backbone correctly in eval mode)
  project   decoded-image cache, the backbone run once per image under inference_mode,
            channels-last, bf16 on AMX CPUs (--precision auto), then 20 epochs of the head alone
Both project runs compute their features once (each in a fresh process with an empty cache folder),
so "caching" (tutorial fp32 -> project fp32) and "bf16" (project fp32 -> project auto) are printed
as separate ratios. The tutorial loop does identical work every epoch, so with --tutorial-epochs below 20 its
20-epoch time is its measured time per epoch x 20 (printed as such). ResNet50 is random-init
(the same compute as pretrained); EfficientNet-Lite0 uses its real ImageNet weights.

    python bench/bench_transfer.py --tutorial-epochs 2
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
from bench.timing import in_fresh_process  # noqa: E402
from bench.tutorial import tutorial_dataset, tutorial_evaluate  # noqa: E402
from common.backbones import BACKBONES  # noqa: E402
from common.features import load_backbone  # noqa: E402
from common.data import load_splits  # noqa: E402
from common.demo import default_data  # noqa: E402
from common.train import seed_everything  # noqa: E402
from common.runtime import cpu_flags  # noqa: E402
from common.run import train  # noqa: E402
from common.transfer import linear_head, transfer_task  # noqa: E402

EPOCHS, BATCH = 20, 100


def loader(root, split, shuffle, generator=None):
    return DataLoader(tutorial_dataset(root, split), batch_size=BATCH, shuffle=shuffle, generator=generator,
                      num_workers=2)


def tutorial(name, root, epochs, seed):
    """Seconds for `epochs` epochs of the usual loop, and its test metrics after them."""
    seed_everything(seed)
    classes = ImageFolder(str(root / "train")).classes
    backbone = load_backbone(name, pretrained=name == "efficientnet_lite0")
    model = nn.Sequential(backbone, linear_head(BACKBONES[name].feature_dim, len(classes)))
    optimizer = torch.optim.Adam(model[1].parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader(root, "train", True, generator):
            loss = F.nll_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        tutorial_evaluate(model, loader(root, "validation", False))
        scheduler.step()
    seconds = time.perf_counter() - start
    return seconds, tutorial_evaluate(model, loader(root, "test", False))


def project(name, root, seed, precision):
    """Seconds for the whole cached run, feature extraction included, and its test metrics, measured in
    a fresh process with an empty cache folder (its REPRO_CACHE_DIR), so that no features are reused."""
    with tempfile.TemporaryDirectory() as cache:
        found = in_fresh_process(__file__, ["--project", precision, "--backbones", name, "--data", str(root),
                                            "--seed", str(seed)], {**os.environ, "REPRO_CACHE_DIR": cache})
    return found["seconds"], found["test"]


def measure_project(name, root, seed, precision):
    """Run one project run here and print its seconds and test metrics as JSON (in the child process).
    The decoded-image cache is filled first, untimed: all tasks share it, and bench/bench_data.py times it."""
    load_splits(root)
    with tempfile.TemporaryDirectory() as out:
        task = transfer_task(f"task1_{name}", name, "")
        config = task.config(data=root, out=Path(out), seed=seed, precision=precision, no_pretrained=name == "resnet50")
        start = time.perf_counter()
        train(task, config)
        seconds = time.perf_counter() - start
        test = json.loads((Path(out) / "metrics.json").read_text())["test"]
    print(json.dumps({"seconds": seconds, "test": test}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tutorial-epochs", type=int, default=EPOCHS,
                        help=f"epochs actually run by the tutorial loop; its {EPOCHS}-epoch time is extrapolated "
                             f"from them (default: {EPOCHS}, nothing extrapolated)")
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "efficientnet_lite0"], choices=list(BACKBONES))
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    parser.add_argument("--data", type=Path, default=None, help="split folder (default: the demo split)")
    parser.add_argument("--project", help=argparse.SUPPRESS)  # internal: one project run at this precision, here
    args = parser.parse_args()
    root = args.data or default_data()
    if args.project:
        return measure_project(args.backbones[0], root, args.seed, args.project)
    print(f"task 1, {EPOCHS} epochs, batch {BATCH}, on {root}; {torch.get_num_threads()} threads, "
          f"CPU flags: {cpu_flags()}")
    print(f"{'backbone':<20}{'path':<30}{'seconds':>9}{'speed-up':>10}   test logloss / top-1 / top-3")
    for name in args.backbones:
        measured, tutorial_test = tutorial(name, root, args.tutorial_epochs, args.seed)
        tutorial_seconds = measured / args.tutorial_epochs * EPOCHS
        label = "tutorial, fp32" + ("" if args.tutorial_epochs == EPOCHS else f" ({args.tutorial_epochs} ep x{EPOCHS / args.tutorial_epochs:g})")
        rows = [(label, tutorial_seconds, tutorial_test if args.tutorial_epochs == EPOCHS else None)]
        for precision in ("auto", "fp32"):
            rows.append((f"project, --precision {precision}", *project(name, root, args.seed, precision)))
        for path, seconds, test in rows:
            metrics = f"{test['loss']:.4f} / {test['top1']:.2f} % / {test['top3']:.2f} %" if test else "(not run to the end)"
            print(f"{name:<20}{path:<30}{seconds:>9.1f}{tutorial_seconds / seconds:>9.1f}x   {metrics}")
        (_, auto_seconds, _), (_, fp32_seconds, _) = rows[1:]
        print(f"{name:<20}caching alone (tutorial fp32 / project fp32): {tutorial_seconds / fp32_seconds:.1f}x; "
              f"bf16 alone (project fp32 / project auto): {fp32_seconds / auto_seconds:.2f}x", flush=True)


if __name__ == "__main__":
    main()
