import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import task3_netvlad
from common.cli import UserError
from common.data import normalize
from common.models import ShallowConvNet, ShallowConvolutions, ShallowNetVLAD, descriptor_count, set_alpha
from common.netvlad import init_like_report
from conftest import make_split


def parameter_count(module):
    return sum(p.numel() for p in module.parameters())


def images(n, size, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_figure8_parameter_counts():
    model = ShallowConvNet(7)
    first_conv, second_conv = model.features[0][0], model.features[0][3]
    hidden, output = model.classifier[0], model.classifier[3]
    assert [parameter_count(m) for m in (first_conv, second_conv, hidden, output)] == [112, 592, 23_328_500, 3_507]
    assert parameter_count(model) == 23_332_711


@pytest.mark.parametrize("height, width", [(224, 224), (21, 16), (9, 12)])  # odd conv outputs drop a row in pooling
def test_shallow_convolutions_equal_the_plain_layers_with_gradients(height, width):
    torch.manual_seed(0)
    features = ShallowConvolutions().double()
    x = torch.randn(2, 3, height, width, dtype=torch.float64, requires_grad=True)
    fast = features(x)
    grads = torch.autograd.grad(fast.square().sum(), [x, *features.parameters()])
    plain = nn.Sequential.forward(features, x)  # the five layers one after another
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
    for fast_grad, plain_grad in zip(grads, torch.autograd.grad(plain.square().sum(), [x, *features.parameters()])):
        torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-12, atol=1e-12)


def test_shallow_convolutions_normalise_uint8_images():
    torch.manual_seed(0)
    features = ShallowConvolutions()
    uint8 = images(2, 24)
    fast = features(uint8)
    torch.testing.assert_close(fast, nn.Sequential.forward(features, normalize(uint8)), rtol=1e-5, atol=1e-5)
    assert fast.is_contiguous(memory_format=torch.channels_last)


def test_figure8_outputs_log_probabilities():
    torch.manual_seed(0)
    out = ShallowConvNet(5, image_size=32).eval()(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 5)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(3))


@pytest.mark.parametrize("k", [1, 4, 16])
def test_netvlad_model_output_and_parameter_count(k):
    torch.manual_seed(0)
    classes = 7
    model = ShallowNetVLAD(classes, k)
    out = model(torch.randn(2, 3, 20, 20))
    assert out.shape == (2, classes)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))
    convs = 112 + 592
    netvlad = k * 16 + k * 16 + k  # centres, then the 1x1 assignment conv's weight and bias
    linear = k * 16 * classes + classes
    assert parameter_count(model) == convs + netvlad + linear


def test_report_model_has_1291_parameters():
    # the report's "about 1,291" is exact: 704 (convs) + 132 (NetVLAD, K=4) + 455 (Linear 64 -> 7)
    assert parameter_count(ShallowNetVLAD(7, 4)) == 1291


def test_descriptor_count_of_report_input():
    assert descriptor_count(224) == 109 * 109


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    model = ShallowNetVLAD(3, 4)
    x = torch.randn(2, 3, 24, 24)
    expected = model(x)
    model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), expected,
                               rtol=1e-5, atol=1e-5)


def test_gradients_reach_convolutions_and_netvlad():
    torch.manual_seed(0)
    model = ShallowNetVLAD(3, 4)
    F.nll_loss(model(torch.randn(4, 3, 20, 20)), torch.tensor([0, 1, 2, 0])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def kmeans_initialised(seed, k=4):
    torch.manual_seed(0)
    model = ShallowNetVLAD(3, k)
    alpha, error = model.init_kmeans(images(6, 20), torch.Generator().manual_seed(seed), per_image=30)
    return model, alpha, error


def test_kmeans_init_sets_centres_and_assignment_from_them():
    torch.manual_seed(0)
    placeholder = ShallowNetVLAD(3, 4).netvlad.centroids.detach()
    model, alpha, error = kmeans_initialised(seed=0)
    layer = model.netvlad
    c = layer.centroids.detach()
    assert alpha > 0 and layer.alpha == alpha and 0 < error < 1
    assert not torch.equal(c, placeholder)
    assert (c.norm(dim=1) <= 1 + 1e-6).all()  # means of L2-normalised descriptors
    torch.testing.assert_close(layer.conv.weight.detach()[:, :, 0, 0], 2 * alpha * c)
    torch.testing.assert_close(layer.conv.bias.detach(), -alpha * c.pow(2).sum(1))


def test_kmeans_init_is_deterministic_with_the_seed():
    a, alpha_a, _ = kmeans_initialised(seed=0)
    b, alpha_b, _ = kmeans_initialised(seed=0)
    c, _, _ = kmeans_initialised(seed=1)
    assert torch.equal(a.netvlad.centroids, b.netvlad.centroids) and alpha_a == alpha_b
    assert not torch.equal(a.netvlad.centroids, c.netvlad.centroids)


def test_set_alpha_rescales_assignment_of_both_inits():
    model, alpha, _ = kmeans_initialised(seed=0)
    report = ShallowNetVLAD(3, 4).netvlad
    init_like_report(report, torch.Generator().manual_seed(0))
    for layer in (model.netvlad, report):
        weight, bias, old = layer.conv.weight.clone(), layer.conv.bias.clone(), layer.alpha
        set_alpha(layer, 3 * old)
        assert layer.alpha == 3 * old
        torch.testing.assert_close(layer.conv.weight, 3 * weight)
        torch.testing.assert_close(layer.conv.bias, 3 * bias)


@pytest.mark.slow
def test_task3_script_runs_and_records_its_init(tmp_path):
    data = make_split(tmp_path / "data", counts=(3, 1, 1))
    common = ["--data", str(data), "--epochs", "1", "--batch-size", "5", "--precision", "fp32", "--clusters", "2",
              "--compile", "off"]
    task3_netvlad.main([*common, "--out", str(tmp_path / "kmeans")])
    task3_netvlad.main([*common, "--out", str(tmp_path / "random"), "--init", "random", "--alpha", "2"])
    kmeans = json.loads((tmp_path / "kmeans" / "config.json").read_text())["netvlad"]
    random = json.loads((tmp_path / "random" / "config.json").read_text())["netvlad"]
    assert kmeans["init"] == "kmeans" and kmeans["alpha"] == kmeans["chosen_alpha"] > 0
    assert random == {"init": "random", "clusters": 2, "alpha": 2.0}
    assert (tmp_path / "kmeans" / "metrics.json").exists()


@pytest.mark.parametrize("argv", [["--clusters", "0"], ["--clusters", "10000000"], ["--alpha", "nan"]])
def test_task3_script_refuses_bad_netvlad_options(argv, tmp_path):
    with pytest.raises(UserError):
        task3_netvlad.main([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", [["--clusters", "3"], ["--init", "random"], ["--alpha", "7"]])
def test_task3_resume_refuses_other_netvlad_settings(change, tmp_path):
    data = make_split(tmp_path / "data", counts=(3, 1, 1))
    common = ["--data", str(data), "--batch-size", "5", "--precision", "fp32", "--out", str(tmp_path / "run"),
              "--compile", "off"]
    task3_netvlad.main([*common, "--epochs", "1", "--clusters", "2"])
    before = (tmp_path / "run" / "config.json").read_text()
    option = change[0]
    with pytest.raises(UserError, match=f"other settings: {option} "):
        task3_netvlad.main([*common, "--epochs", "2", "--clusters", "2", *change, "--resume"])
    assert (tmp_path / "run" / "config.json").read_text() == before
