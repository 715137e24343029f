"""Frozen backbones as feature extractors (task 1): a registry entry built with its weights, always in eval
mode, and the features it computes cached by content, in memory and on disk (per split, and per image)."""
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from common import distributed
from common.augment import augment_batch, train_augmentation
from common.backbones import spec_of
from common.cache import ArrayCache, MappedArray
from common.data import CROP, IMAGENET_MEAN, IMAGENET_STD, model_input
from common.errors import UserError, warn
from common.runtime import autocast, pick_device, pick_precision
from common.weights import load_imagenet_weights, resolve_weights


class FrozenBackbone(nn.Module):
    """ImageNet-normalised images -> B x F features; always in eval mode, no gradients."""

    def __init__(self, name, net, weights_source, input_mean, input_std):
        super().__init__()
        self.name = name
        self.net = net
        self.weights_source = weights_source  # file path or "random init", for the caller's records
        # re-map ImageNet normalisation to the one the weights expect, like torchvision googlenet's transform_input
        imagenet_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        imagenet_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(input_mean).view(1, 3, 1, 1)
        std = torch.tensor(input_std).view(1, 3, 1, 1)
        self.register_buffer("input_scale", imagenet_std / std)
        self.register_buffer("input_shift", (imagenet_mean - mean) / std)
        self._fingerprint = None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        # a parent's .train() must not switch BatchNorm to batch statistics or turn dropout on
        return super().train(False)

    def forward(self, images):
        """uint8 images (normalised here, see model_input) or ImageNet-normalised float ones."""
        return self.net(model_input(images) * self.input_scale + self.input_shift)

    def weights_fingerprint(self):
        """sha1 over every tensor of the loaded weights: names the weights in feature-cache keys."""
        if self._fingerprint is None:
            digest = hashlib.sha1()
            for key, tensor in self.state_dict().items():
                digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def load_backbone(name, weights_file=None, pretrained=True, keep_classifier=False, weights_label=None):
    """Frozen feature extractor (images -> B x feature_dim), or with keep_classifier the 1000-class ImageNet model.

    pretrained=False: random init from the caller's seed, no weight file touched.
    weights_label: how messages name weights_file (default "--weights FILE", the option that gives it).
    """
    spec = spec_of(name)
    label = weights_label or f"--weights {weights_file}"
    # weights first: a missing file fails before the slow model build
    state_dict, source = resolve_weights(name, spec, weights_file, label) if pretrained else (None, "random init")
    model = spec.build()
    if state_dict is not None:
        load_imagenet_weights(model, name, spec, state_dict, label if weights_file is not None else source)
    if not keep_classifier:
        model = spec.drop_head(model)
    return FrozenBackbone(name, model, source, spec.input_mean, spec.input_std)


def content_digests(images):
    """sha1s of the images' shape and bytes, read 256 images at a time (the images may be a large split on
    disk): the split's (as before entries per image, so that splits cached then stay cached), and each
    image's, which the same file decoded with the same preprocessing gives in any split."""
    split = hashlib.sha1(str(tuple(images.shape)).encode())
    per_image = []
    for start in range(0, len(images), 256):
        chunk = images[start:start + 256].contiguous()
        split.update(chunk.reshape(-1).numpy())
        for image in chunk:
            digest = hashlib.sha1(str(tuple(image.shape)).encode())
            digest.update(image.reshape(-1).numpy())
            per_image.append(digest.hexdigest())
    return split.hexdigest(), per_image


def feature_cache_key(backbone, precision, content, augment_seed=None):
    """Backbone name, weights fingerprint, precision, the content's digest (a split's or an image's, see
    content_digests) and, for an augmented view, its augmentation and seed."""
    view = "" if augment_seed is None else f"|{train_augmentation(CROP)!r}|{augment_seed}"
    key = f"{backbone.name}|{backbone.weights_fingerprint()}|{precision}|{content}{view}"
    return f"{backbone.name}-{precision}-{hashlib.sha1(key.encode()).hexdigest()[:20]}"


_feature_cache = {}


def run_backbone(backbone, images, batch_size, precision, device, augment_seed=None):
    """Features of images, a batch at a time; with augment_seed, of each image's augmented view
    drawn from that seed (the same views whatever the batch size), leaving the run's RNG untouched.
    Under torchrun each rank computes its rows of every batch, and all ranks get all features."""
    backbone.to(device, memory_format=torch.channels_last)
    augmentation = train_augmentation(CROP) if augment_seed is not None else None
    features, indices = [], []
    progress = tqdm(total=len(images), desc=f"{backbone.name} features", unit="img", file=sys.stderr,
                    mininterval=1 if sys.stderr.isatty() else 30,  # CI logs: a line every 30 s, not per batch
                    disable=not distributed.is_main())
    with torch.inference_mode(), autocast(device, precision), torch.random.fork_rng(devices=[]):
        if augment_seed is not None:
            torch.manual_seed(augment_seed)
        for start in range(0, len(images), batch_size):
            rows = distributed.shard(torch.arange(start, min(start + batch_size, len(images))))
            if augmentation is not None:  # every rank augments the whole batch, so the views stay the same
                batch = augment_batch(images[start:start + batch_size], augmentation)[rows - start]
            else:
                batch = images[rows]
            if len(rows):
                features.append(backbone(batch.to(device, non_blocking=True)).float().cpu())
                indices.append(rows)
            progress.update(min(batch_size, len(images) - start))
    progress.close()
    mine = torch.cat(features) if features else torch.empty(0)
    return distributed.gather_rows(mine, torch.cat(indices) if indices else torch.empty(0, dtype=torch.long), len(images))


def cached_features(disk, key, shape):
    """The features stored under key, or None when missing or damaged. NaN or inf in them is damage
    too (features of working weights are finite, see refuse_non_finite): computed again, not trained on."""
    features = disk.get(key, shape, np.float32, mmap=True)
    if features is None or all(np.isfinite(features[i:i + 4096]).all() for i in range(0, len(features), 4096)):
        return features  # checked 4096 rows at a time: a large split's whole bool array would be GBs
    warn(f"{disk.file(key)}: cached features hold NaN or infinite values; computed again")
    return None


def refuse_non_finite(features, backbone, precision):
    """Fresh features with NaN or inf (broken weights, or overflow at a low precision) would only show
    as a training loss of nan, blamed on the learning rate: refused here, naming their cause."""
    if not torch.isfinite(features).all():
        raise UserError(f"the {backbone.name} backbone ({backbone.weights_source}) gives NaN or infinite features "
                        f"at precision {precision}: its weights are broken, or try --precision fp32")


def cached_image_features(disk, key, feature_dim):
    """One image's features stored under key, or None when missing or damaged (NaN or inf too, as in
    cached_features)."""
    features = disk.get(key, (feature_dim,), np.float32)
    if features is not None and not np.isfinite(features).all():
        warn(f"{disk.file(key)}: cached features hold NaN or infinite values; computed again")
        return None
    return features


def image_features(backbone, images, digests, batch_size, precision, device, cache_dir):
    """The images' features from an entry per image, so that a split holding images that another split
    held (a re-split, a cross-validation fold) reads theirs; the backbone runs on the others only, in
    batches, in the split's order. Under torchrun, computed by all ranks together and stored by rank 0."""
    disk = ArrayCache(Path(cache_dir) / "images") if cache_dir is not None else None
    keys = [feature_cache_key(backbone, precision, digest) for digest in digests]
    features = torch.empty(len(images), spec_of(backbone.name).feature_dim)
    missing = []
    for i, key in enumerate(keys):
        cached = cached_image_features(disk, key, features.shape[1]) if disk else None
        if cached is None:
            missing.append(i)
        else:
            features[i] = torch.from_numpy(cached)
    missing = sorted(set().union(*distributed.from_every_rank(missing)))  # what any rank lacks, all compute
    if missing:
        features[missing] = run_backbone(backbone, Subset(images, torch.tensor(missing)), batch_size, precision, device)
        refuse_non_finite(features[missing], backbone, precision)
        if disk and distributed.is_main():
            for i in missing:
                disk.put(keys[i], features[i].numpy())
    return features


def extract_features(backbone, images, batch_size=64, precision="auto", device=None, cache_dir=None, augment_seed=None):
    """uint8 N x 3 x H x W images (or their augmented views, see run_backbone) -> float32 N x F features,
    cached in memory and (with cache_dir) on disk, where they stay (a MappedArray).

    The cache key covers the backbone name, a fingerprint of its weights, the precision and the split's
    image bytes. A split not cached whole is put together from its images' entries (image_features),
    except an augmented view: its images' views depend on the batch they were drawn in.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"extract_features expects uint8 images, got {images.dtype}")
    device = torch.device(device) if device is not None else pick_device()
    precision = pick_precision(precision, device)
    split_digest, digests = content_digests(images)
    key = feature_cache_key(backbone, precision, split_digest, augment_seed)
    memo = (key, str(cache_dir))  # the features may be a file in that cache folder
    if memo in _feature_cache:
        return _feature_cache[memo]
    disk = ArrayCache(cache_dir) if cache_dir is not None else None
    shape = (len(images), spec_of(backbone.name).feature_dim)
    if distributed.all_ranks(disk and cached_features(disk, key, shape) is not None):
        features = MappedArray(disk.file(key), shape, np.float32)
    else:  # under torchrun computed by all ranks together, and stored by rank 0
        if augment_seed is None:
            features = image_features(backbone, images, digests, batch_size, precision, device, cache_dir)
        else:
            features = run_backbone(backbone, images, batch_size, precision, device, augment_seed)
            refuse_non_finite(features, backbone, precision)
        if disk and distributed.is_main() and disk.put(key, features.numpy()):
            features = MappedArray(disk.file(key), shape, np.float32)  # on disk, read a batch at a time, as the images are
    _feature_cache[memo] = features
    return features
