"""Task 1: a frozen ImageNet backbone with a new linear head, trained on features computed once."""
import argparse
import dataclasses
from pathlib import Path

import torch.nn as nn

import common.data
from common.backbones import BACKBONES, extract_features, load_backbone
from common.cli import UserError
from common.run_folder import add_training_args
from common.train import count_parameters, start_run, train_and_report


def linear_head(feature_dim, num_classes):
    return nn.Sequential(nn.Linear(feature_dim, num_classes), nn.LogSoftmax(dim=1))


def feature_splits(backbone, data, run):
    """The same splits with each image replaced by its backbone features (cached by content)."""
    cache = common.data.CACHE_DIR / "features"
    splits = {name: dataclasses.replace(split, inputs=extract_features(
                  backbone, split.inputs, precision=run.precision, device=run.device, cache_dir=cache))
              for name, split in data.splits().items()}
    return dataclasses.replace(data, **splits)


def parse_args(name, description, argv=None):
    weight_file = BACKBONES[name].weight_file
    parser = argparse.ArgumentParser(description=description)
    add_training_args(parser, f"task1_{name}", epochs=20, batch_size=100)
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"local ImageNet state dict for the backbone (default: {weight_file} from the torch hub "
                             "cache $TORCH_HOME/hub/checkpoints/, downloaded there when missing and online)")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="random-init backbone instead of ImageNet weights (every output says so)")
    args = parser.parse_args(argv)
    if args.no_pretrained and args.weights is not None:
        raise UserError("--weights and --no-pretrained contradict each other: pick one")
    return args


def run_transfer(name, title, description, argv=None):
    """Parse arguments, extract frozen features once, train the linear head, write the results."""
    args = parse_args(name, description, argv)
    run = start_run(f"task1_{name}", args)
    backbone = load_backbone(name, args.weights, pretrained=not args.no_pretrained)
    if args.no_pretrained:
        title += " (random-init backbone, not pretrained)"
    # --resume and predict.py must use the same backbone, wherever its weight file lies now
    run.identity["backbone weights (sha1)"] = backbone.weights_fingerprint()
    head = linear_head(BACKBONES[name].feature_dim, len(run.data.classes))
    features_run = dataclasses.replace(run, data=feature_splits(backbone, run.data, run))
    _, backbone_parameters = count_parameters(backbone)
    return train_and_report(head, features_run, title, {
        "backbone": name, "pretrained": not args.no_pretrained, "weights": backbone.weights_source,
        "weights_sha1": backbone.weights_fingerprint(),
        "backbone_parameters": backbone_parameters, "features": "computed once, cached"})
