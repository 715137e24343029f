import pytest
import torch
import torch.nn as nn

from common.errors import UserError
from common.gradcam import grad_cam
from common.models import ShallowConvNet, ShallowNetVLAD


def cam_network(inplace_after=False):
    """Conv -> global average pool -> linear -> LogSoftmax: the network CAM (Zhou et al., 2016) was made for."""
    torch.manual_seed(0)
    after = [nn.Identity()] if not inplace_after else [nn.Hardtanh(-1e6, 1e6, inplace=True)]  # changes nothing, in place
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), *after, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(5, 4), nn.LogSoftmax(dim=1))


def cam(network, images, classes):
    """CAM by its definition: the class's linear weights over the feature maps, ReLU'd and scaled to [0, 1]."""
    maps = network[0](images)
    weights = network[-2].weight[classes]  # N x K
    heat = torch.relu(torch.einsum("nk,nkhw->nhw", weights, maps))
    return heat / heat.amax(dim=(1, 2), keepdim=True)


def test_grad_cam_is_cam_on_a_global_average_pooling_network():
    network, images = cam_network(), torch.randn(6, 3, 12, 12)
    classes = torch.tensor([0, 1, 2, 3, 0, 1])
    expected = cam(network, images, classes).detach()
    assert torch.allclose(grad_cam(network, images, classes), expected, atol=1e-5)
    # the class score is taken before the softmax: its gradient through LogSoftmax would mix in the others'
    other = grad_cam(nn.Sequential(*network[:-1], nn.Identity()), images, classes)  # no LogSoftmax: scores as given
    assert torch.allclose(other, expected, atol=1e-5)


def test_a_frozen_network_is_explained_alike_and_gets_no_gradients():
    network, images, classes = cam_network(), torch.randn(3, 3, 12, 12), torch.tensor([2, 0, 1])
    expected = grad_cam(network, images, classes)
    network.requires_grad_(False)
    assert torch.allclose(grad_cam(network, images, classes), expected)
    assert all(p.grad is None for p in network.parameters())


def test_an_in_place_layer_after_the_convolution_and_a_one_image_batch_work():
    network, image = cam_network(inplace_after=True), torch.randn(1, 3, 12, 12)
    heat = grad_cam(network, image, torch.tensor([1]))
    assert heat.shape == (1, 12, 12) and torch.allclose(heat, cam(network, image, torch.tensor([1])).detach(), atol=1e-5)


def test_the_maps_are_upsampled_to_the_image_and_point_at_the_evidence():
    """A 7 x 7 grid of 2 x 2 pixel blocks: class 0's evidence is the red channel, present in one corner only."""
    network = nn.Sequential(nn.Conv2d(3, 1, 2, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        network[0].weight.zero_()
        network[0].weight[0, 0] = 1  # the red channel, summed over each block
        network[0].bias.zero_()
        network[3].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    image = torch.zeros(1, 3, 14, 14)
    image[0, 0, :4, :4] = 1  # red in the top-left 2 x 2 blocks
    heat = grad_cam(network, image, torch.tensor([0]))[0]
    assert heat.shape == (14, 14) and heat.max() == 1
    assert heat[:3, :3].min() > 0.9 and heat[8:, 8:].max() == 0
    assert grad_cam(network, image, torch.tensor([1])).max() == 0  # no evidence for class 1: all zero, not NaN


def test_the_shallow_models_are_explained_on_the_last_convolution_that_runs():
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)  # as the runs feed them
    classes = torch.tensor([0, 6])
    for model in (ShallowConvNet(7), ShallowNetVLAD(7, 4)):
        heat = grad_cam(model, images, classes)
        assert heat.shape == (2, 224, 224) and torch.isfinite(heat).all() and heat.amax() <= 1 and heat.amin() >= 0
        last = model.features[0][3] if isinstance(model, ShallowConvNet) else model.features[3]
        assert torch.equal(heat, grad_cam(model, images, classes, layer=last))  # not NetVLAD's 1x1 conv, never called


def test_a_model_without_a_convolution_or_whose_layer_never_runs_is_one_line():
    with pytest.raises(UserError, match="no convolutional layer"):
        grad_cam(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.randn(1, 3, 2, 2), torch.tensor([0]))
    unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(UserError, match="did not run"):
        grad_cam(cam_network(), torch.randn(1, 3, 8, 8), torch.tensor([0]), layer=unused)
    functional = nn.Sequential(unused, nn.Flatten(), nn.Linear(48, 2))
    functional.forward = lambda x: functional[2](functional[1](x))  # the convolution is never called
    with pytest.raises(UserError, match="none of the model's convolutional layers ran"):
        grad_cam(functional, torch.randn(1, 3, 4, 4), torch.tensor([0]))
