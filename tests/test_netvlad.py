import math

import pytest
import torch
import torch.nn.functional as F

from common.cli import UserError
from common.netvlad import (NetVLAD, check_clusters, check_fits, init_from_descriptors,
                            init_like_report, kmeans)


def paper_netvlad(x, centroids, alpha, normalize_input):
    """The paper's formula, one descriptor and one cluster at a time, from distances (no conv)."""
    out = []
    for feature_map in x:
        descriptors = feature_map.flatten(1).T  # N x D
        if normalize_input:
            descriptors = descriptors / descriptors.norm(dim=1, keepdim=True)
        vlad = torch.zeros_like(centroids)
        for xi in descriptors:
            weights = torch.exp(-alpha * ((xi - centroids) ** 2).sum(1))
            weights = weights / weights.sum()
            for k in range(len(centroids)):
                vlad[k] += weights[k] * (xi - centroids[k])
        vlad = vlad / vlad.norm(dim=1, keepdim=True)
        out.append(vlad.flatten() / vlad.flatten().norm())
    return torch.stack(out)


def clustered_descriptors(n, dim=8, clusters=6, seed=0):
    """Tight clusters around random directions, each descriptor rescaled so the raw norms vary."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(clusters, dim, generator=g), dim=1)
    x = means[torch.randint(clusters, (n,), generator=g)] + 0.08 * torch.randn(n, dim, generator=g)
    return x * torch.empty(n, 1).uniform_(0.5, 3.0, generator=g), means


def quantisation_error(descriptors, centres):
    return torch.cdist(descriptors, centres).pow(2).min(1).values.mean().item()


@pytest.mark.parametrize("normalize_input", [True, False])
def test_layer_equals_paper_formula(normalize_input):
    torch.manual_seed(0)
    layer = NetVLAD(3, 5, alpha=4.0, normalize_input=normalize_input).double()
    layer.set_centroids(0.5 * torch.randn(3, 5, dtype=torch.float64))
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    expected = paper_netvlad(x, layer.centroids.detach(), 4.0, normalize_input)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_cluster_blocks_and_output_have_unit_norm():
    torch.manual_seed(0)
    k, d = 4, 6
    out = NetVLAD(k, d, alpha=2.0)(torch.randn(3, d, 5, 5))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    # every block had norm 1 before the final L2, which then divides all of them by sqrt(K)
    torch.testing.assert_close(out.view(3, k, d).norm(dim=2), torch.full((3, k), 1 / math.sqrt(k)))


def test_gradients_reach_assignment_and_centres():
    torch.manual_seed(0)
    layer = NetVLAD(4, 6, alpha=2.0)
    (layer(torch.randn(2, 6, 5, 5)) @ torch.randn(24)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_kmeans_beats_random_centres_and_finds_the_clusters():
    descriptors, true_means = clustered_descriptors(3000)
    descriptors = F.normalize(descriptors, dim=1)
    g = torch.Generator().manual_seed(1)
    centres = kmeans(descriptors, 6, generator=g)
    random_centres = F.normalize(torch.rand(6, 8, generator=g), dim=1)
    error = quantisation_error(descriptors, centres)
    assert error < 0.2 * quantisation_error(descriptors, random_centres)
    assert error < 1.1 * quantisation_error(descriptors, true_means)


def test_kmeans_survives_empty_clusters():
    points = torch.eye(3).repeat(20, 1)  # only 3 distinct descriptors for 5 clusters
    centres = kmeans(points, 5, generator=torch.Generator().manual_seed(0))
    assert quantisation_error(points, centres) == pytest.approx(0, abs=1e-6)
    # the clusters left empty restart at descriptors, not at 0 / 0 or the origin
    assert quantisation_error(centres, points) == pytest.approx(0, abs=1e-6)


def test_chosen_alpha_gives_target_ratio_on_held_out_descriptors():
    descriptors, _ = clustered_descriptors(4000)
    layer = NetVLAD(6, 8)
    alpha = init_from_descriptors(layer, descriptors[:3000], generator=torch.Generator().manual_seed(0))
    assert alpha == layer.alpha
    held_out = F.normalize(descriptors[3000:], dim=1)
    weights = layer.soft_assign(held_out[None]).detach()[0].T  # K x N, through the assignment weights
    top_two = weights.topk(2, dim=0).values
    geometric_mean_ratio = (top_two[0].log() - top_two[1].log()).mean().exp().item()
    assert 100 / 3 < geometric_mean_ratio < 100 * 3


def test_init_sets_paper_assignment_and_report_init_does_not():
    layer = NetVLAD(4, 8)
    alpha = init_from_descriptors(layer, clustered_descriptors(500)[0], generator=torch.Generator().manual_seed(0))
    c = layer.centroids.detach()
    torch.testing.assert_close(layer.conv.weight.detach()[:, :, 0, 0], 2 * alpha * c)
    torch.testing.assert_close(layer.conv.bias.detach(), -alpha * c.pow(2).sum(1))

    assert init_like_report(layer, generator=torch.Generator().manual_seed(0)) == 0.5
    c = layer.centroids.detach()
    assert not layer.normalize_input and 0 <= c.min() and c.max() < 1
    torch.testing.assert_close(layer.conv.bias.detach(), -0.5 * c.norm(dim=1))


@pytest.mark.parametrize("k", [1, 2, 4, 16, 64])
def test_output_shape(k):
    layer = NetVLAD(k, 16)
    init_from_descriptors(layer, torch.randn(200, 16), generator=torch.Generator().manual_seed(0))
    assert layer(torch.randn(2, 16, 7, 5)).shape == (2, k * 16)


def test_bf16_autocast_keeps_float32_math():
    torch.manual_seed(0)
    layer, x = NetVLAD(4, 16, alpha=5.0), torch.randn(2, 16, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer(x.bfloat16().float()))


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "4"])
def test_bad_cluster_counts_are_user_errors(k):
    with pytest.raises(UserError, match="positive integer"):
        check_clusters(k)
    with pytest.raises(UserError):
        NetVLAD(k, 16)


def test_configuration_that_cannot_fit_is_refused():
    check_fits(50, 64, 16, 109 * 109)  # the task's largest setting fits in this machine's RAM
    with pytest.raises(UserError, match=r"K=1000000 .*GiB"):
        check_fits(50, 10**6, 16, 109 * 109)
