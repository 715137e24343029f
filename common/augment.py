"""--augment: the standard small-data recipe, applied per batch to the cached uint8 images.

Each training image gets its own random resized crop back to 224 x 224 (area 35-100 % of the
cached centre crop, aspect 3/4 to 4/3) and a horizontal flip with probability 1/2; evaluation
keeps the report's resize-256 / centre-crop-224. The transforms are torchvision's v2 and draw
from torch's global generator, which every run seeds and every checkpoint saves, so the same
seed gives the same augmented batches and --resume continues the same stream.
"""
import torch
from torchvision.transforms import v2

SCALE = (0.35, 1.0)  # fraction of the image's area a crop keeps
VIEWS = 10  # task 1 frozen: augmented views whose features are computed once per training image


def train_augmentation(size):
    return v2.Compose([v2.RandomResizedCrop(size, scale=SCALE, antialias=True), v2.RandomHorizontalFlip()])


def augment_batch(images, transform):
    """uint8 B x 3 x H x W -> the same shape, each image cropped and flipped on its own.

    A v2 transform draws its parameters once per call, so it is called per image. Channels-last
    uint8 images take torchvision's vectorised resize (about a third faster here).
    """
    images = images.contiguous(memory_format=torch.channels_last)
    return torch.stack([transform(image) for image in images])
