"""The usual tutorial path that the benchmarks measure the project against: torchvision's
ImageFolder decoding, resizing and normalising every image on every pass, a no_grad evaluation,
and tasks 2 and 3's convolutions run as plain layers."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from torchvision.datasets import ImageFolder

from common.data import IMAGENET_MEAN, IMAGENET_STD, model_input
from common.models import ShallowConvolutions
from common.train import Meter


def tutorial_dataset(root, split):
    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return ImageFolder(str(root / split), transform=transform)


def tutorial_evaluate(model, loader):
    """Logloss, top-1 and top-3 over a DataLoader, in eval mode."""
    model.eval()
    meter = Meter()
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            meter.add(out, y, F.nll_loss(out, y, reduction="sum"))
    return meter.result()


class PlainConvolutions(ShallowConvolutions):
    """The five layers one after another, as before conv_relu_pool."""

    def forward(self, images):
        return nn.Sequential.forward(self, model_input(images))


def with_plain_layers(model):
    """`model` with its convolutions run as the plain layers, the usual way (same parameters)."""
    for module in model.modules():
        if isinstance(module, ShallowConvolutions):
            module.__class__ = PlainConvolutions
    return model
