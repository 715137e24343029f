"""The report's networks trained from scratch: the shallow ConvNet (Figure 8) and its NetVLAD variant."""
import torch.nn as nn


def shallow_convolutions():
    """Conv 3->4 3x3, ReLU, AvgPool 2, Conv 4->16 3x3, ReLU: the feature part Figures 8 and 11 share."""
    return nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 16, kernel_size=3), nn.ReLU(),
    )


class ShallowConvNet(nn.Module):
    """Figure 8: 23,332,711 parameters for 7 classes on 224 x 224 inputs."""

    def __init__(self, num_classes, image_size=224):
        super().__init__()
        side = ((image_size - 2) // 2 - 2) // 2  # 224 -> 222 -> 111 -> 109 -> 54
        self.features = nn.Sequential(shallow_convolutions(), nn.AvgPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 500), nn.ReLU(), nn.Dropout(0.4),
            nn.Linear(500, num_classes), nn.LogSoftmax(dim=1),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
