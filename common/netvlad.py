"""NetVLAD layer (Arandjelovic et al., CVPR 2016) with k-means initialisation.

Typical use:
    check_clusters(k); check_fits(batch, k, dim, n)   # refuse bad K before building anything
    layer = NetVLAD(k, dim)
    alpha = init_from_descriptors(layer, train_descriptors)   # N x D sample, e.g. 50k descriptors
"""
import math
import numbers
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import UserError

REPORT_ALPHA = 0.5  # the 2020 report's fixed alpha


def check_clusters(k):
    """Refuse a number of clusters that is not a positive integer."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise UserError(f"number of NetVLAD clusters must be a positive integer, got {k!r}")


def estimate_forward_bytes(batch, k, dim, n, bytes_per_value=4):
    """Rough peak memory of one forward + backward of the layer for `batch` maps of n descriptors.

    Per image it holds several D x N copies of the descriptors (input, normalised input, their
    gradients, temporaries) and a few K x N assignment maps (logits, softmax, their gradients).
    The counts are rounded up from peak RSS measured as in bench/bench_netvlad.py (at most 6.4 D
    + 3.2 K values per descriptor for D in {16, 64}, K in 1..128), so this errs on the high side.
    """
    return bytes_per_value * batch * n * (7 * dim + 4 * k)


def check_fits(batch, k, dim, n, available_bytes=None):
    """Refuse a configuration whose NetVLAD activations alone exceed the memory (default: total RAM)."""
    if available_bytes is None:
        available_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    needed = estimate_forward_bytes(batch, k, dim, n)
    if needed > available_bytes:
        raise UserError(f"NetVLAD with K={k} needs about {needed / 2**30:.1f} GiB for a batch of {batch} "
                        f"({n} descriptors of dimension {dim}), "
                        f"more than the {available_bytes / 2**30:.1f} GiB available")


class NetVLAD(nn.Module):
    """B x D x H x W feature map -> B x (K*D) VLAD vector, intra-normalised then L2-normalised.

    Soft assignment is a 1x1 conv (w_k, b_k) trained independently of the centres c_k; it starts
    as w_k = 2 alpha c_k, b_k = -alpha ||c_k||^2, which equals softmax_k(-alpha ||x - c_k||^2).
    The math runs in the parameters' dtype (float32) even under autocast: the layer is cheap
    next to the convolutions, and bf16 would lose the small residuals sum_i a_ki (x_i - c_k).
    """

    def __init__(self, num_clusters: int, dim: int, alpha: float = 100.0, normalize_input: bool = True):
        super().__init__()
        check_clusters(num_clusters)
        self.num_clusters, self.dim = num_clusters, dim
        self.alpha = alpha
        self.normalize_input = normalize_input
        self.centroids = nn.Parameter(torch.empty(num_clusters, dim))
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=True)
        self.set_centroids(torch.rand(num_clusters, dim))  # placeholder until init_from_descriptors

    @torch.no_grad()
    def set_centroids(self, centroids, alpha=None):
        """Set c and the assignment conv from it: w_k = 2 alpha c_k, b_k = -alpha ||c_k||^2."""
        self.alpha = self.alpha if alpha is None else alpha
        self.centroids.copy_(centroids)
        self.conv.weight.copy_(2 * self.alpha * centroids[:, :, None, None])
        self.conv.bias.copy_(-self.alpha * centroids.pow(2).sum(1))

    def soft_assign(self, x):
        """B x N x D descriptors (already normalised if normalize_input) -> B x N x K assignment weights.

        The 1x1 conv applied as a matrix product over the descriptor axis: with N x D rows
        (what a channels-last feature map is in memory) the softmax runs over contiguous K.
        """
        return F.linear(x, self.conv.weight.flatten(1), self.conv.bias).softmax(dim=2)

    def descriptors(self, x):
        """B x D x H x W feature maps -> B x N x D descriptors in the parameters' dtype, L2-normalised
        if normalize_input; free for channels-last input."""
        x = x.to(self.centroids.dtype)
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        return x.permute(0, 2, 3, 1).flatten(1, 2)

    @torch.inference_mode()
    def assignments(self, x):
        """B x D x H x W feature maps -> B x K x H x W: each position's soft assignment weights, as
        forward computes them (summing to 1 over the K clusters)."""
        batch, _, height, width = x.shape
        a = self.soft_assign(self.descriptors(x))  # B x N x K
        return a.transpose(1, 2).reshape(batch, self.num_clusters, height, width)

    def aggregate(self, a, x):
        """V_k = sum_i a_ik (x_i - c_k) = A^T X - (sum_i a_ik) c_k, so no B x K x D x N residuals."""
        return torch.bmm(a.transpose(1, 2), x) - a.sum(1).unsqueeze(2) * self.centroids

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            x = self.descriptors(x)
            vlad = self.aggregate(self.soft_assign(x), x)  # B x K x D
            vlad = F.normalize(vlad, dim=2)  # intra-normalisation
            return F.normalize(vlad.flatten(1), dim=1)


def kmeans(descriptors, k, iters=25, generator=None):
    """Lloyd's k-means with k-means++ seeding on N x D descriptors; returns k x D centres."""
    n = len(descriptors)
    if n < k:
        raise UserError(f"k-means needs at least K={k} descriptors, got {n}")
    centres = descriptors[torch.randint(n, (1,), generator=generator)]
    closest = (descriptors - centres).pow(2).sum(1)
    for _ in range(k - 1):
        # k-means++: next seed drawn with probability proportional to the squared distance to the
        # seeds so far; the clamp keeps sampling possible when every descriptor is already a seed
        pick = torch.multinomial(closest.clamp_min(1e-12), 1, generator=generator)
        centres = torch.cat([centres, descriptors[pick]])
        closest = torch.minimum(closest, (descriptors - descriptors[pick]).pow(2).sum(1))
    for _ in range(iters):
        dist, assign = torch.cdist(descriptors, centres).min(1)
        counts = torch.bincount(assign, minlength=k)
        centres = torch.zeros_like(centres).index_add_(0, assign, descriptors) / counts.clamp_min(1)[:, None]
        # an empty cluster restarts at the descriptors worst served by their centre
        empty = counts == 0
        centres[empty] = descriptors[dist.topk(int(empty.sum())).indices]
    return centres


def choose_alpha(descriptors, centroids, ratio=100.0):
    """alpha with exp(-alpha d1) / exp(-alpha d2) = ratio for the mean gap d2 - d1 of squared distances
    to the nearest and second-nearest centre.

    The mean gap (as in the reference pytorch-NetVlad) makes the geometric mean of the largest to
    second assignment weight equal `ratio`; averaging the ratios themselves would be dominated by
    the few descriptors with a large gap.
    """
    nearest_two = torch.cdist(descriptors, centroids).pow(2).topk(2, dim=1, largest=False).values
    gap = (nearest_two[:, 1] - nearest_two[:, 0]).mean().item()
    if gap <= 0:
        raise UserError("cannot choose NetVLAD alpha: descriptors are equally far from two centres "
                        "(too few distinct descriptors for K?)")
    return math.log(ratio) / gap


def init_from_descriptors(layer, descriptors, generator=None, ratio=100.0):
    """Paper initialisation: k-means centres on N x D training descriptors (normalised like the
    layer normalises its input), alpha from choose_alpha; sets c, w, b and returns alpha."""
    if layer.normalize_input:
        descriptors = F.normalize(descriptors, dim=1)
    centres = kmeans(descriptors, layer.num_clusters, generator=generator)
    # with one cluster the softmax is constant 1, so alpha has no effect: keep the layer's
    alpha = choose_alpha(descriptors, centres, ratio) if layer.num_clusters > 1 else layer.alpha
    layer.set_centroids(centres, alpha)
    return alpha


@torch.no_grad()
def init_like_report(layer, generator=None):
    """The 2020 report's initialisation, kept for comparison: centres from torch.rand (uniform
    [0, 1), no k-means), alpha 0.5, w = 2 alpha c, b = -alpha ||c|| (not squared, so the
    assignment is not the distance softmax) and no input normalisation. Returns alpha."""
    centres = torch.rand(layer.num_clusters, layer.dim, generator=generator)
    layer.normalize_input = False
    layer.set_centroids(centres, REPORT_ALPHA)
    layer.conv.bias.copy_(-REPORT_ALPHA * centres.norm(dim=1))
    return REPORT_ALPHA
