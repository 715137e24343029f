"""Grad-CAM (Selvaraju et al., 2017): where in an image a model found the evidence for a class.

The last convolutional layer's feature maps A_k are weighted by the mean gradient of the class score
over each map, summed, and ReLU'd: ReLU(sum_k mean(dy_c / dA_k) A_k), upsampled to the image and
scaled to [0, 1]. The class score y_c is taken before the softmax, as the paper does: our models end
in LogSoftmax, whose input is read. For a network that ends in global average pooling and a linear
layer this is exactly CAM (Zhou et al., 2016), which tests/test_gradcam.py checks.

A forward hook swaps the layer's output for a copy that requires grad, so that a frozen backbone
(no parameter requiring grad) is explained as well as a trained one."""
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import results
from common.errors import UserError


def convolutions(model):
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise UserError("the model has no convolutional layer for Grad-CAM to explain")
    return convolutions


def last_log_softmax(model):
    found = [m for m in model.modules() if isinstance(m, nn.LogSoftmax)]
    return found[-1] if found else None


def grad_cam(model, images, classes, layer=None):
    """N x H x W heat maps in [0, 1] of `images` (a batch as the model takes it, N x 3 x H x W) for
    `classes` (N class indices), over the feature maps of `layer`; by default the last Conv2d module
    that runs in the forward pass (NetVLAD applies its 1x1 convolution's weights as a matrix product,
    so task 3 is explained on the shallow ConvNet's last maps). The model is put in eval mode and
    run in fp32; its parameters get no gradient."""
    captured = {}

    def keep_maps(module, inputs, output):  # a later convolution's maps replace an earlier one's
        captured["maps"] = output.detach().float().requires_grad_()
        return captured["maps"].clone()  # a copy: a later in-place op must not touch the leaf

    def keep_scores(module, inputs, output):
        captured["scores"] = inputs[0]

    hooks = [conv.register_forward_hook(keep_maps) for conv in ([layer] if layer else convolutions(model))]
    softmax = last_log_softmax(model)
    if softmax is not None:
        hooks.append(softmax.register_forward_hook(keep_scores))
    model.eval()
    try:
        with torch.enable_grad():
            output = model(images)
            if "maps" not in captured:
                raise UserError(f"the layer {layer} did not run in the model's forward pass, so Grad-CAM cannot use it"
                                if layer else "none of the model's convolutional layers ran as a module in its forward "
                                              "pass, so Grad-CAM has no maps to explain")
            scores = captured.get("scores", output).float()
            maps, = torch.autograd.grad(scores.gather(1, classes.view(-1, 1)).sum(), captured["maps"])
    finally:
        for hook in hooks:
            hook.remove()
    weights = maps.mean(dim=(2, 3), keepdim=True)
    heat = F.relu((weights * captured["maps"].detach()).sum(dim=1, keepdim=True))
    heat = F.interpolate(heat, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return heat / heat.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)  # all zero stays zero: no evidence


def draw(ax, image, heat=None, alpha=0.5):
    """The uint8 3 x H x W image with its heat map over it (jet: red is where the evidence lies)."""
    ax.imshow(image.permute(1, 2, 0).numpy())
    if heat is not None:
        ax.imshow(heat.numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.axis("off")


def plot_explanation(path, image, heat, title):
    """One image as the model saw it, beside its heat map over it (predict.py --explain)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(6, 3.4))
    draw(left, image)
    draw(right, image, heat)
    fig.suptitle(title, fontsize=8)
    results.save_figure(fig, path)
