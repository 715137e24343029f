"""The usual tutorial path that the benchmarks measure the project against: torchvision's
ImageFolder decoding, resizing and normalising every image on every pass, a no_grad evaluation,
and tasks 2 and 3's convolutions run as plain layers (common.models.with_plain_layers)."""
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torchvision.datasets import ImageFolder

from common.data import IMAGENET_MEAN, IMAGENET_STD
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
