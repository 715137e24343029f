"""Image loading with the report's preprocessing, each image decoded once (its entry in the cache),
and the splits read from there a batch at a time."""
import contextlib
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageOps
from tqdm import tqdm

from common import cache
from common.cache import DIGEST_TRAILER, ArrayCache, check_cache_outside, npy_header, read_mapped
from common.errors import UserError, warn
from common.paths import is_inside

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What every script reads as an image, in folders and named on the command line: torchvision's list and
# .gif (PIL reads its first frame; open_rgb turns its palette into RGB).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


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


def model_input(inputs):
    """An image model's first step: uint8 images -> normalised float32, channels-last; float inputs
    (images normalised already) pass unchanged. In the model rather than the data path, so that
    torch.compile fuses it with the first layer instead of writing the float images out first.

    Channels-last: oneDNN's convolutions with 3 or 4 input channels run about twice as fast that
    way on CPU (see bench/bench_task2.py)."""
    if inputs.dtype != torch.uint8:
        return inputs
    return normalize(inputs).contiguous(memory_format=torch.channels_last)


# --- the three splits, decoded once -------------------------------------------------

SPLITS = ("train", "validation", "test")
MANIFEST = "split.csv"  # written by data_split.py once a split is complete
UNFINISHED_MANIFEST = "split.csv.incomplete"  # what an interrupted data_split.py may have left behind
RESIZE, CROP = 256, 224


MAX_ASPECT = 10  # longer side / shorter side beyond which the long side is cut before resizing


def limit_aspect(image):
    """Cut the long side of an extreme image (a 1 x 30000 strip) to MAX_ASPECT x the short side,
    centred. Resizing the short side to 256 would otherwise make it 256 x 7.7 million pixels
    (gigabytes); the centre crop keeps only the middle anyway, and no ordinary image is touched."""
    width, height = image.size
    short = max(1, min(width, height))
    if max(width, height) <= MAX_ASPECT * short:
        return image
    keep_w, keep_h = min(width, MAX_ASPECT * short), min(height, MAX_ASPECT * short)
    left, top = (width - keep_w) // 2, (height - keep_h) // 2
    return image.crop((left, top, left + keep_w, top + keep_h))


def report_transform():
    """The report's preprocessing up to the tensor: resize 256, centre-crop 224, uint8 CHW.

    Normalisation happens per batch, in the model (`model_input`), so the cached uint8 tensor is lossless.
    """
    return T.Compose([limit_aspect, T.Resize(RESIZE), T.CenterCrop(CROP), T.PILToTensor()])


@dataclass
class Split:
    """One split: inputs (uint8 images, read from disk a batch at a time, or float features), labels,
    and where each came from."""
    inputs: object  # DecodedImages, MappedArray or a tensor; with views, a list of V: V versions of each sample
    labels: torch.Tensor
    paths: list
    digests: list  # sha1 of each image file: the split's identity, whatever its path
    views: bool = False  # task 1's augmented features: each sample comes as one of its V versions

    def __len__(self):
        return len(self.labels)

    def batches(self, batch_size, generator=None, shard=None):
        """Yield (inputs, labels) batches; shuffled when a generator is given. With views, each
        sample of a batch comes as one of its versions, drawn with the same generator. `shard` picks
        this process's rows of every batch (under torchrun; see common/distributed.py)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for idx in order.split(batch_size):
            # drawn for the whole batch, before sharding, so every rank's generator stays in step
            picks = torch.randint(len(self.inputs), (len(idx),), generator=generator) if self.views else None
            if shard is not None:
                idx, picks = shard(idx), picks if picks is None else shard(picks)
            yield self.read(idx, picks), self.labels[idx]

    def read(self, idx, picks=None):
        if not self.views:
            return self.inputs[idx]
        inputs = torch.empty(len(idx), *self.inputs[0].shape[1:], dtype=self.inputs[0].dtype)
        for view, rows in enumerate(self.inputs):  # one read per view (each may be a file on disk)
            inputs[picks == view] = rows[idx[picks == view]]
        return inputs


@dataclass
class SplitData:
    root: Path
    classes: list
    train: Split
    validation: Split
    test: Split

    def splits(self):
        return {name: getattr(self, name) for name in SPLITS}

    def fingerprint(self):
        """sha1 over the classes and every split's images and labels, in order: a re-split differs."""
        digest = hashlib.sha1(repr(self.classes).encode())
        for name, split in self.splits().items():
            digest.update(repr((name, split.digests, split.labels.tolist())).encode())
        return digest.hexdigest()


def file_sha1(path):
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def decoded_cache(cache_dir=None):
    """The decoded-image cache: one folder per preprocessing, under $REPRO_CACHE_DIR or .cache/."""
    return ArrayCache(Path(cache_dir or cache.CACHE_DIR) / f"decoded_r{RESIZE}_c{CROP}")


def read_image(file):
    """One decoded image from its cache file, in one read when the file holds exactly what ArrayCache
    writes for it (about 3 times faster than np.load, which a batch does 50 times); anything else
    (another numpy's header, or a file changed during the run) goes through read_mapped's checks."""
    shape = (3, CROP, CROP)
    header = npy_header(shape, np.dtype(np.uint8))
    size = len(header) + 3 * CROP * CROP + DIGEST_TRAILER
    if os.path.isfile(file):  # not a FIFO, which open() would wait on
        with contextlib.suppress(OSError), open(file, "rb") as f:
            data = f.read(size + 1)
            if len(data) == size and data.startswith(header):
                return np.frombuffer(data, np.uint8, 3 * CROP * CROP, offset=len(header)).reshape(shape)
    return read_mapped(file, shape, np.uint8)


class DecodedImages:
    """A split's decoded images as a uint8 N x 3 x 224 x 224 array that stays on disk: indexing it
    (an index, a slice or a tensor of indices) reads just those images from their cache files.

    Each read maps the file and lets go of it after the copy, so resident memory holds a batch, not
    the split (100,000 images are 15 GB); the OS page cache keeps the files that later epochs read
    again. An image the cache could not store is held in memory instead.
    """
    dtype = torch.uint8

    def __init__(self, sources):
        self.sources = sources  # per image: its cache file, or its array when the cache is not writable

    def __len__(self):
        return len(self.sources)

    @property
    def shape(self):
        return (len(self), 3, CROP, CROP)

    def __getitem__(self, index):
        if isinstance(index, int):
            return self[[index]][0]
        picked = self.sources[index] if isinstance(index, slice) else [self.sources[i] for i in torch.as_tensor(index).tolist()]
        batch = np.empty((len(picked), *self.shape[1:]), np.uint8)
        for row, source in zip(batch, picked):
            row[...] = source if isinstance(source, np.ndarray) else read_image(source)
        return torch.from_numpy(batch)


def decode_images(paths, cache, desc="load"):
    """The images among `paths` that decode, as DecodedImages; and their indices and sha1s.

    Each image is decoded once: the result is kept in `cache` under its content hash, so
    later runs, other splits and re-splits of the same files load it instead. A file that
    cannot be read as an image is named in a warning and left out.
    """
    transform = report_transform()
    shape = (3, CROP, CROP)

    def load(path):
        try:
            digest = file_sha1(path)
            if cache.get(digest, shape, np.uint8, mmap=True) is None:
                image = transform(open_rgb(path)).numpy()
                if not cache.put(digest, image):
                    return digest, image
            return digest, cache.file(digest)
        except Exception as e:  # PIL raises many types for bad files (and a decompression bomb); all mean "skip"
            warn(f"{path}: cannot be read as an image ({type(e).__name__}: {str(e)[:120]}); left out")
            return None

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL decodes outside the GIL
        loaded = list(tqdm(pool.map(load, paths), total=len(paths), desc=desc, unit="img", leave=False,
                           mininterval=5, disable=None))
    kept = [i for i, item in enumerate(loaded) if item is not None]
    return DecodedImages([loaded[i][1] for i in kept]), kept, [loaded[i][0] for i in kept]


def has_image_extension(name):
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def is_image_file(path):
    """An image extension and a regular file: a FIFO or device named x.png would block reading forever."""
    if not has_image_extension(path):
        return False
    if not os.path.isfile(path):
        warn(f"{path}: not a regular file; left out")
        return False
    return True


def walk_files(folder, recursive=True):
    """The files below FOLDER but hidden ones, in ImageFolder's order: folders sorted by path, files by
    name within each. Links to files are followed; links to folders below FOLDER are not (a warning names
    each): one that leads back up (`ln -s . c0/l`) would list the same images again, without end.
    Every script lists images through here, so they all read the same files."""
    found = []
    for root, dirs, files in os.walk(folder):  # followlinks=False: a link to a folder is listed, not entered
        dirs[:] = [d for d in dirs if recursive and not d.startswith(".")]
        for link in [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            warn(f"{os.path.join(root, link)}: a link to a folder; not followed (its images are left out)")
            dirs.remove(link)
        found.append((root, sorted(f for f in files if not f.startswith("."))))
    return [os.path.join(root, name) for root, names in sorted(found) for name in names]


def list_images(folder, recursive=True):
    """FOLDER's image files (walk_files' order), as path strings."""
    return [file for file in walk_files(folder, recursive) if is_image_file(file)]


def sub_folders(folder):
    """FOLDER's sub-folders, links to folders included, sorted by name; hidden ones are no class (Jupyter
    puts a .ipynb_checkpoints folder in every folder it opens)."""
    return sorted((p for p in Path(folder).iterdir() if not p.name.startswith(".") and p.is_dir()),
                  key=lambda p: p.name)


def class_folders(folder):
    """FOLDER's class folders (sub_folders). A link among them that would count images in two classes is
    refused: one that leads to FOLDER or above it, or onto or into another class folder."""
    folders = sub_folders(folder)
    real = {}
    for path in folders:
        if is_inside(folder, path):  # a class of every class's images
            raise UserError(f"class folder {path} links to {folder} or a folder above it; remove or replace that link")
        real.setdefault(os.path.realpath(path), []).append(path)
    for path in folders:
        target = Path(os.path.realpath(path))
        other = next((q for place in [target, *target.parents] for q in real.get(str(place), []) if q != path), None)
        if other is not None:
            link, shared = (path, other) if path.is_symlink() else (other, path)
            raise UserError(f"class folder {link} links to images of the class folder {shared.name} too: they would "
                            "count in two classes; remove or replace that link")
    return folders


def split_images(folder):
    """A split folder's class names and its [(image file, label)], in ImageFolder's order: classes sorted,
    labels their index, files as walk_files orders them. Runs made before (with ImageFolder) see the same."""
    folders = class_folders(folder)
    if not folders:
        raise UserError(f"{folder} holds no class folders: expected {folder}/<class>/<images>")
    samples = [(file, label) for label, path in enumerate(folders) for file in list_images(path)]
    return [p.name for p in folders], samples


def load_split(folder, samples, cache):
    images, kept, digests = decode_images([file for file, _ in samples], cache, f"load {folder.name}")
    if not samples:
        raise UserError(f"{folder} holds no images")
    if not kept:
        raise UserError(f"{folder}: none of its {len(samples)} images can be read (see the warnings above)")
    if len(kept) < len(samples):
        warn(f"{folder}: using {len(kept)} images, left out {len(samples) - len(kept)} that cannot be read")
    labels = torch.tensor([samples[i][1] for i in kept], dtype=torch.long)
    return Split(images, labels, [samples[i][0] for i in kept], digests)


def check_classes(root, classes):
    """Every split holds the same class folders, and at least 2, with names a manifest can record."""
    for name in classes["train"]:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"class folder {ascii(name)} in {root}/train: the name is not valid UTF-8; rename it") from None
    for s in SPLITS[1:]:
        if classes[s] != classes["train"]:
            only_train = sorted(set(classes["train"]) - set(classes[s]))
            only_here = sorted(set(classes[s]) - set(classes["train"]))
            raise UserError(f"splits hold different classes: {s} lacks {only_train or 'none'} "
                            f"and has extra {only_here or 'none'} compared with train")
    if len(classes["train"]) < 2:
        raise UserError(f"{root}/train needs at least 2 class folders, found {len(classes['train'])}")


def check_every_class_trains(root, classes, train):
    """A class without a training image would still be scored on validation and test, and never predicted."""
    trained = set(train.labels.tolist())
    untrained = [name for label, name in enumerate(classes) if label not in trained]
    if untrained:
        raise UserError(f"{root}/train holds no readable image of the class(es) {', '.join(untrained)}: the model "
                        "could never predict them; add training images, or remove those class folders from every split")


def load_splits(root, cache_dir=None):
    """Load DIR/{train,validation,test}/<class>/ with the report's preprocessing.

    Unreadable images (corrupt, truncated, not an image, a decompression bomb) are named in a
    warning and left out; a split left with none is an error, and so is a class with no training image.
    Hidden entries are skipped, and links are followed as walk_files and class_folders say.
    """
    root = Path(root)
    cache = decoded_cache(cache_dir)
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise UserError(f"{root} has no {', '.join(missing)} folder: expected {root}/{{train,validation,test}}/<class>/ "
                        f"(make one with: python data_split.py SRC {root})")
    if (root / UNFINISHED_MANIFEST).exists():
        raise UserError(f"{root} is a split that data_split.py did not finish; run it again with --force")
    check_cache_outside(root, cache_dir=cache_dir)
    listed = {s: split_images(root / s) for s in SPLITS}
    check_classes(root, {s: classes for s, (classes, _) in listed.items()})
    classes = listed["train"][0]
    train = load_split(root / "train", listed["train"][1], cache)
    check_every_class_trains(root, classes, train)  # before the other splits are decoded
    return SplitData(root, classes, train, *(load_split(root / s, listed[s][1], cache) for s in SPLITS[1:]))
