"""Task 1: an ImageNet backbone with a new linear head: frozen (features computed once) or fine-tuned."""
import argparse
import dataclasses
from pathlib import Path

import torch.nn as nn

import common.data
from common.augment import VIEWS
from common.backbones import BACKBONES, extract_features, load_backbone
from common.cli import UserError
from common.run_folder import add_training_args
from common.train import count_parameters, start_run, train_and_report


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
    cache = common.data.CACHE_DIR / "features"
    splits = {name: dataclasses.replace(split, inputs=extract_features(
                  backbone, split.inputs, precision=run.precision, device=run.device, cache_dir=cache))
              for name, split in data.splits().items()}
    return dataclasses.replace(data, **splits)


def augmented_features(backbone, split, run):
    """The training split as VIEWS augmented views per image, each view's features computed once
    (cached by content); training draws one view per image and epoch. View v of seed s is the
    augmentation drawn with seed s * VIEWS + v."""
    views = [extract_features(backbone, split.inputs, precision=run.precision, device=run.device,
                              cache_dir=common.data.CACHE_DIR / "features", augment_seed=run.args.seed * VIEWS + v)
             for v in range(VIEWS)]
    return dataclasses.replace(split, inputs=views, views=True)


def parse_args(name, description, argv=None):
    weight_file = BACKBONES[name].weight_file
    parser = argparse.ArgumentParser(description=description)
    add_training_args(parser, f"task1_{name}", epochs=20, batch_size=100)
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"local ImageNet state dict for the backbone (default: {weight_file} from the torch hub "
                             "cache $TORCH_HOME/hub/checkpoints/, downloaded there when missing and online)")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="random-init backbone instead of ImageNet weights (every output says so)")
    parser.add_argument("--finetune", action="store_true",
                        help="train the whole backbone too, at --backbone-lr-factor x --lr, BatchNorm statistics kept "
                             "from ImageNet (default: frozen backbone, features computed once)")
    parser.add_argument("--backbone-lr-factor", type=float, default=0.1,
                        help="with --finetune: the backbone's learning rate as a fraction of the head's (default: 0.1)")
    args = parser.parse_args(argv)
    if args.no_pretrained and args.weights is not None:
        raise UserError("--weights and --no-pretrained contradict each other: pick one")
    if args.finetune and args.no_pretrained:
        raise UserError("--finetune needs pretrained weights: a random-init backbone trained here is training "
                        "from scratch, not fine-tuning (drop --no-pretrained, or --finetune)")
    if not args.finetune and args.backbone_lr_factor != 0.1:
        raise UserError("--backbone-lr-factor applies only with --finetune")
    if not 0 < args.backbone_lr_factor <= 1:
        raise UserError(f"--backbone-lr-factor must be in (0, 1], got {args.backbone_lr_factor}")
    return args


def describe(title, args):
    """The title every output carries: how the backbone was trained, and on what."""
    title += ", fine-tuned" if args.finetune else ", frozen"
    title += ", linear head"
    if args.augment:
        title += ", augmented"
    if args.no_pretrained:
        title += " (random-init backbone, not pretrained)"
    return title


def run_transfer(name, title, description, argv=None):
    """Parse arguments; frozen: extract features once and train the linear head on them;
    --finetune: train backbone and head on the images. Writes the results."""
    args = parse_args(name, description, argv)
    run = start_run(f"task1_{name}", args)
    backbone = load_backbone(name, args.weights, pretrained=not args.no_pretrained)
    title = describe(title, args)
    # --resume and predict.py must use the same backbone, wherever its weight file lies now
    run.identity["backbone weights (sha1)"] = backbone.weights_fingerprint()
    head = linear_head(BACKBONES[name].feature_dim, len(run.data.classes))
    _, backbone_parameters = count_parameters(backbone)
    config = {"backbone": name, "pretrained": not args.no_pretrained, "weights": backbone.weights_source,
              "weights_sha1": backbone.weights_fingerprint(), "backbone_parameters": backbone_parameters,
              "finetuned": args.finetune}
    if args.finetune:
        config["features"] = "computed in every step (fine-tuned backbone)"
        return train_and_report(FineTuned(backbone, head, args.backbone_lr_factor), run, title, config)
    features_run = dataclasses.replace(run, data=feature_splits(backbone, run.data, run))
    if args.augment:
        features_run.train_source = augmented_features(backbone, run.data.train, run)
        config["features"] = f"computed once; training: {VIEWS} augmented views per image, cached"
    else:
        config["features"] = "computed once, cached"
    return train_and_report(head, features_run, title, config)
