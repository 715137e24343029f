"""Feature-extraction throughput (images/s) per backbone in fp32 and bf16, and bf16's effect on real features;
with --second-split, the feature cache's reuse across splits of the same images."""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
from common.backbones import BACKBONES  # noqa: E402
from common.cache import ArrayCache  # noqa: E402
from common.data import load_splits  # noqa: E402
from common.demo import default_data  # noqa: E402
from common.features import content_digests, extract_features, image_features, load_backbone, run_backbone  # noqa: E402
from common.paths import DEMO_IMAGES  # noqa: E402
from common.split import split_dataset  # noqa: E402
from common.runtime import cpu_has_amx, pick_precision  # noqa: E402
from common.cli import UserError, run_main  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64, help="random 224x224 images to push through (default 64)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES),
                        help="backbones to time (default: all); random init, which costs the same as trained weights")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random images and weights (default 0)")
    parser.add_argument("--second-split", action="store_true",
                        help="instead: seconds to extract EfficientNet-Lite0's features (ImageNet weights) of a "
                             "second split of the demo images (the same images in other roles), with a fresh "
                             "cache (what the per-split cache of before did) and with the demo split's")
    args = parser.parse_args()
    if args.images < 1 or args.batch_size < 1:
        raise UserError("--images and --batch-size must be at least 1")
    try:
        args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device {args.device}: not a torch device (e.g. cpu, cuda, cuda:1)")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available here")
    return args


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_per_second(backbone, images, batch_size, precision, device):
    run_backbone(backbone, images[:batch_size], batch_size, precision, device)  # warm-up: kernel selection
    synchronize(device)
    start = time.perf_counter()
    run_backbone(backbone, images, batch_size, precision, device)
    synchronize(device)
    return len(images) / (time.perf_counter() - start)


def seconds(work):
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def split_features(backbone, data, cache_dir, batch_size, precision, device):
    """Every split's features, one call per split as task 1 makes them (common/transfer.py)."""
    return [extract_features(backbone, split.inputs, batch_size, precision, device, cache_dir)
            for split in data.splits().values()]


def second_split(args):
    """The demo split's features, then those of data_split.py --seed 1's split of the same images (other
    train/validation/test roles, as a cross-validation fold holds them): with a fresh feature cache,
    as the per-split cache key of before always missed for another split, and with the demo split's."""
    backbone = load_backbone("efficientnet_lite0")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = load_splits(default_data(), tmp)  # decoded images in tmp: both splits read the same entries
        split_dataset(DEMO_IMAGES, tmp / "second", seed=1)
        second = load_splits(tmp / "second", tmp)
        run = (args.batch_size, pick_precision("auto", args.device), args.device)
        first, _ = seconds(lambda: split_features(backbone, demo, tmp / "features", *run))
        before, _ = seconds(lambda: split_features(backbone, second, tmp / "fresh", *run))
        ArrayCache.checked.clear()  # as in a new process: each entry's SHA-256 is checked on its first read
        after, _ = seconds(lambda: split_features(backbone, second, tmp / "features", *run))
        hashing, digests = seconds(lambda: [content_digests(split.inputs)[1] for split in second.splits().values()])
        ArrayCache.checked.clear()
        reading, _ = seconds(lambda: [image_features(backbone, split.inputs, split_digests, *run, tmp / "features")
                                      for split, split_digests in zip(second.splits().values(), digests)])
    images = sum(len(split) for split in second.splits().values())
    print(f"EfficientNet-Lite0 features of {images} demo images, batch {args.batch_size}, {run[1]} on {args.device}, "
          f"{torch.get_num_threads()} threads, AMX bf16 {cpu_has_amx()}")
    print(f"demo split (fills the cache):             {first:7.2f} s")
    print(f"second split, before (a fresh cache):     {before:7.2f} s")
    print(f"second split, after (the demo split's):   {after:7.2f} s ({before / after:.0f}x faster)")
    print(f"  of which hashing the decoded images {hashing:.2f} s, reading the {images} images' feature entries "
          f"{reading:.2f} s")


def main():
    args = parse_args()
    if args.second_split:
        return second_split(args)
    device = args.device
    torch.manual_seed(args.seed)
    images = torch.randint(0, 256, (args.images, 3, 224, 224), dtype=torch.uint8)
    print(f"device {device}, {torch.get_num_threads()} threads, AMX bf16 {cpu_has_amx()}, "
          f"{args.images} images, batch {args.batch_size}")
    print(f"{'backbone':20s} {'fp32 img/s':>11s} {'bf16 img/s':>11s} {'speed-up':>9s}")
    for name in args.backbones:
        backbone = load_backbone(name, pretrained=False)
        fp32, bf16 = (images_per_second(backbone, images, args.batch_size, p, device) for p in ("fp32", "bf16"))
        print(f"{name:20s} {fp32:11.1f} {bf16:11.1f} {bf16 / fp32:8.2f}x", flush=True)

    backbone = load_backbone("efficientnet_lite0")
    fp32, bf16 = (run_backbone(backbone, images, args.batch_size, p, device) for p in ("fp32", "bf16"))
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16)
    print(f"efficientnet_lite0 ImageNet weights, bf16 vs fp32 features: max abs diff "
          f"{(fp32 - bf16).abs().max():.4f} (fp32 max abs {fp32.abs().max():.2f}), "
          f"cosine min {cosine.min():.5f} mean {cosine.mean():.5f}")


if __name__ == "__main__":
    run_main(main)
