"""The report's networks trained from scratch: the shallow ConvNet (Figure 8) and its NetVLAD variant."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.data import model_input
from common.netvlad import NetVLAD, init_from_descriptors


def space_to_depth_kernel(weight):
    """A 3x3 convolution's weights (O, C, 3, 3) -> those of a 2x2 convolution (4 O, 4 C, 2, 2) over the
    space-to-depth input (F.pixel_unshuffle(x, 2): channel c*4 + sy*2 + sx is pixel (2y+sy, 2x+sx) of
    channel c) that gives the 3x3 outputs at (2y+dy, 2x+dx) as channel o*4 + dy*2 + dx.

    Output (2y+dy, 2x+dx) reads input rows 2y+dy .. 2y+dy+2: the kernel placed at offset (dy, dx) of
    the 4x4 input window that the 2x2 taps of the 2x2-pixel blocks cover."""
    out_channels, in_channels = weight.shape[:2]
    placed = [F.pad(weight, (dx, 1 - dx, dy, 1 - dy)) for dy in (0, 1) for dx in (0, 1)]  # O, C, 4, 4 each
    kernel = torch.stack(placed, 1).view(out_channels, 4, in_channels, 2, 2, 2, 2)  # o, dy dx, c, tap y, sy, tap x, sx
    return kernel.permute(0, 1, 2, 4, 6, 3, 5).reshape(4 * out_channels, 4 * in_channels, 2, 2)


def conv_relu_pool(x, conv):
    """AvgPool2d(2)(ReLU(conv(x))) for a 3x3 convolution without padding, computed as one 2x2
    convolution of the space-to-depth input: the same products, summed in another order (equal to
    float rounding, tests/test_models.py). oneDNN serves 12 -> 16 channels far better than 3 -> 4
    (`python bench/profile_step.py task2_shallow --against-plain` times both ways).

    The pooling is then the mean of each group of 4 channels, done as a 1x1 convolution: written
    as view().mean(), inductor saves ReLU's mask as bools, which its CPU code stores about 10x
    slower than the whole layer takes this way."""
    rows, cols = (x.shape[-2] - 2) // 2, (x.shape[-1] - 2) // 2  # pooled size; pooling drops an odd last row
    blocks = F.pixel_unshuffle(x[..., :2 * rows + 2, :2 * cols + 2], 2)
    conv_outputs = F.relu(F.conv2d(blocks, space_to_depth_kernel(conv.weight), conv.bias.repeat_interleave(4)))
    channels = conv.out_channels
    group_mean = torch.eye(channels, device=x.device, dtype=conv_outputs.dtype).repeat_interleave(4, dim=1) / 4
    return F.conv2d(conv_outputs, group_mean[:, :, None, None])


class ShallowConvolutions(nn.Sequential):
    """Conv 3->4 3x3, ReLU, AvgPool 2, Conv 4->16 3x3, ReLU: the feature part Figures 8 and 11 share.
    Takes uint8 images (normalised here, see model_input) or normalised float ones.

    The layers are kept as modules (their parameters and state_dict keys are the plain Sequential's),
    but the first three run as conv_relu_pool."""

    def __init__(self):
        super().__init__(nn.Conv2d(3, 4, kernel_size=3), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(4, 16, kernel_size=3), nn.ReLU())

    def forward(self, images):
        return self[4](self[3](conv_relu_pool(model_input(images), self[0])))


class PlainConvolutions(ShallowConvolutions):
    """The five layers one after another, each module called: the usual way (the benchmarks' baseline),
    and the way architecture tables see every layer's output."""

    def forward(self, images):
        return nn.Sequential.forward(self, model_input(images))


def with_plain_layers(model):
    """`model` (changed in place) with its convolutions run as the plain layers (same parameters)."""
    for module in model.modules():
        if isinstance(module, ShallowConvolutions):
            module.__class__ = PlainConvolutions
    return model


class ShallowConvNet(nn.Module):
    """Figure 8: 23,332,711 parameters for 7 classes on 224 x 224 inputs."""

    def __init__(self, num_classes, image_size=224):
        super().__init__()
        side = ((image_size - 2) // 2 - 2) // 2  # 224 -> 222 -> 111 -> 109 -> 54
        self.features = nn.Sequential(ShallowConvolutions(), nn.AvgPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 500), nn.ReLU(), nn.Dropout(0.4),
            nn.Linear(500, num_classes), nn.LogSoftmax(dim=1),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


DESCRIPTOR_DIM = 16  # channels of the second convolution: NetVLAD's descriptor dimension D


def descriptor_count(image_size):
    """Descriptors per image NetVLAD sees: 224 -> 222 -> 111 -> 109, so 109 x 109 = 11,881."""
    return ((image_size - 2) // 2 - 2) ** 2


@torch.inference_mode()
def sample_descriptors(features, images, per_image, generator, batch_size=50):
    """(N*per_image) x D descriptors: the feature maps of uint8 images, `per_image` random positions
    of each, drawn without replacement with `generator`; returned on the CPU for k-means."""
    device = next(features.parameters()).device
    samples = []
    for start in range(0, len(images), batch_size):  # images may be a split on disk: a batch at a time
        maps = features(images[start:start + batch_size].to(device)).flatten(2).cpu()  # B x D x N
        picks = torch.rand(maps.shape[0], maps.shape[2], generator=generator)
        picks = picks.topk(min(per_image, maps.shape[2]), dim=1).indices  # random subset per image
        samples.append(maps.gather(2, picks[:, None, :].expand(-1, maps.shape[1], -1)).transpose(1, 2))
    return torch.cat(samples).reshape(-1, maps.shape[1])


@torch.no_grad()
def set_alpha(layer, alpha):
    """Change a NetVLAD layer's alpha keeping its centres: the initial w = 2 alpha c and b (k-means:
    -alpha ||c||^2, the report's: -alpha ||c||) are both proportional to alpha, so rescale them."""
    layer.conv.weight.mul_(alpha / layer.alpha)
    layer.conv.bias.mul_(alpha / layer.alpha)
    layer.alpha = alpha


class ShallowNetVLAD(nn.Module):
    """Figure 11: the two Figure-8 convolutions (second pooling removed), NetVLAD with K clusters,
    Linear(K*16 -> classes), log-softmax. 704 + 33 K + 16 K C + C parameters (1,291 for K=4, C=7)."""

    def __init__(self, num_classes, num_clusters):
        super().__init__()
        self.features = ShallowConvolutions()
        self.netvlad = NetVLAD(num_clusters, DESCRIPTOR_DIM)
        self.classifier = nn.Sequential(nn.Linear(num_clusters * DESCRIPTOR_DIM, num_classes), nn.LogSoftmax(dim=1))

    def forward(self, x):
        return self.classifier(self.netvlad(self.features(x)))

    def init_kmeans(self, images, generator, per_image=200):
        """The paper's initialisation: k-means on descriptors that the (fresh) convolutions compute
        from training images, alpha chosen from them. Returns alpha and the k-means quantisation
        error (mean squared distance of the L2-normalised descriptors to their nearest centre)."""
        descriptors = sample_descriptors(self.features, images, per_image, generator)
        alpha = init_from_descriptors(self.netvlad, descriptors, generator)
        distances = torch.cdist(F.normalize(descriptors, dim=1), self.netvlad.centroids.detach().cpu())
        return alpha, distances.pow(2).min(1).values.mean().item()
