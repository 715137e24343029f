"""Image loading with the report's preprocessing, and the decoded-image cache."""
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageOps
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from common.cli import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def open_rgb(path):
    """Decode any image mode (grayscale, RGBA, palette, CMYK, 16-bit) to 8-bit RGB.

    Transparent pixels become white rather than PIL's default black, and 16-bit
    images are scaled down instead of clipped.
    """
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            img = img.point(lambda v: v / 256).convert("L")  # 16-bit range -> 8-bit
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA"):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        return img.convert("RGB")


def normalize(images):
    """uint8 N x 3 x H x W images -> float32 normalised with ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    # (x / 255 - mean) / std as one multiply and one add, in place: this runs on every batch.
    return images.float().mul_(1 / (255 * std)).add_(-mean / std)


# --- the three splits, decoded once -------------------------------------------------

SPLITS = ("train", "validation", "test")
RESIZE, CROP = 256, 224
CACHE_DIR = Path(os.environ.get("REPRO_CACHE_DIR", Path(__file__).resolve().parent.parent / ".cache"))


def report_transform():
    """The report's preprocessing up to the tensor: resize 256, centre-crop 224, uint8 CHW.

    Normalisation happens per batch (`normalize`), so the cached uint8 tensor is lossless.
    """
    return T.Compose([T.Resize(RESIZE), T.CenterCrop(CROP), T.PILToTensor()])


@dataclass
class Split:
    """One split held in memory: inputs (uint8 images or float features) and labels."""
    inputs: torch.Tensor
    labels: torch.Tensor
    paths: list

    def __len__(self):
        return len(self.labels)

    def batches(self, batch_size, generator=None):
        """Yield (inputs, labels) batches; shuffled when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for idx in order.split(batch_size):
            yield self.inputs[idx], self.labels[idx]


@dataclass
class SplitData:
    root: Path
    classes: list
    train: Split
    validation: Split
    test: Split

    def splits(self):
        return {name: getattr(self, name) for name in SPLITS}


def file_sha1(path):
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def decode_cached(folder, cache_dir):
    """All images of an ImageFolder as one uint8 N x 3 x 224 x 224 tensor.

    Each image is decoded once: the result is kept on disk under its content hash,
    so later runs, other splits and re-splits of the same files load it instead.
    """
    cache = Path(cache_dir) / f"decoded_r{RESIZE}_c{CROP}"
    cache.mkdir(parents=True, exist_ok=True)

    def load(path):
        file = cache / f"{file_sha1(path)}.npy"
        if file.exists():
            return torch.from_numpy(np.load(file))
        image = folder.transform(folder.loader(path))
        tmp = file.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, image.numpy())
        os.replace(tmp, file)  # atomic: a crash never leaves a half-written cache entry
        return image

    paths = [path for path, _ in folder.samples]
    if not paths:
        return torch.empty(0, 3, CROP, CROP, dtype=torch.uint8)
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL decodes outside the GIL
        images = list(tqdm(pool.map(load, paths), total=len(paths), desc=f"load {Path(folder.root).name}",
                           unit="img", leave=False, mininterval=5, disable=None))
    return torch.stack(images)


def image_folder(path):
    return ImageFolder(str(path), transform=report_transform(), loader=open_rgb, allow_empty=True)


def load_splits(root, cache_dir=None):
    """Load DIR/{train,validation,test}/<class>/ with the report's preprocessing."""
    root, cache_dir = Path(root), cache_dir or CACHE_DIR
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise UserError(f"{root} has no {', '.join(missing)} folder: expected {root}/{{train,validation,test}}/<class>/ "
                        f"(make one with: python data_split.py SRC {root})")
    folders = {s: image_folder(root / s) for s in SPLITS}
    classes = folders["train"].classes
    for s in SPLITS[1:]:
        if folders[s].classes != classes:
            only_train = sorted(set(classes) - set(folders[s].classes))
            only_here = sorted(set(folders[s].classes) - set(classes))
            raise UserError(f"splits hold different classes: {s} lacks {only_train or 'none'} "
                            f"and has extra {only_here or 'none'} compared with train")
    if len(classes) < 2:
        raise UserError(f"{root}/train needs at least 2 class folders, found {len(classes)}")
    splits = {}
    for s, folder in folders.items():
        if not folder.samples:
            raise UserError(f"{root}/{s} holds no images")
        labels = torch.tensor(folder.targets, dtype=torch.long)
        splits[s] = Split(decode_cached(folder, cache_dir), labels, [p for p, _ in folder.samples])
    return SplitData(root, classes, **splits)
