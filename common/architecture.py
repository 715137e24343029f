"""A model as the report's Figures 2, 5 and 8 list it: each layer an image goes through, with its
output shape and its parameters, and the totals."""
import copy

import torch

from common.data import CROP
from common.models import with_plain_layers

MAX_ROWS = 40  # a backbone has hundreds of layers: list its blocks instead


def listed(module, depth, prefix=""):
    """The modules a table `depth` deep lists (None: no limit), outermost first: leaves, the modules
    at `depth`, and those holding parameters of their own (NetVLAD's centres, a BatchNorm that
    wraps its activation) without their insides."""
    for name, child in module.named_children():
        full = prefix + name
        own = any(True for _ in child.parameters(recurse=False))
        if not any(child.children()) or full.count(".") + 1 == depth or own:
            yield full, child
        else:
            yield from listed(child, depth, full + ".")


def table_depth(model, max_rows=MAX_ROWS):
    """None (every leaf) where that is at most max_rows modules, else the deepest depth that is."""
    if len(list(listed(model, None))) <= max_rows:
        return None
    deepest = max(name.count(".") + 1 for name, _ in model.named_modules())
    return max((d for d in range(1, deepest + 1) if len(list(listed(model, d))) <= max_rows), default=1)


def layer_rows(model, image_size=CROP):
    """[(layer name, type, output shape, parameters, trainable parameters)] in the order one uint8
    image of image_size² pixels runs through them. A layer run twice is listed twice, its parameters
    counted once. Works on a copy, in eval mode on the CPU, with tasks 2 and 3's fused convolutions
    run as their plain layers, so that each layer is seen."""
    model = with_plain_layers(copy.deepcopy(model)).cpu().eval()
    rows, counted = [], set()

    def record(name):
        def hook(module, inputs, output):
            fresh = [p for p in module.parameters() if id(p) not in counted]
            counted.update(id(p) for p in fresh)
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            rows.append((name, type(module).__name__, shape, sum(p.numel() for p in fresh),
                         sum(p.numel() for p in fresh if p.requires_grad)))
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in listed(model, table_depth(model))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def architecture_markdown(model, title):
    """architecture.md: the layer table and the model's totals (every parameter, also any in a layer
    the image does not go through)."""
    rows = layer_rows(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = [f"# {title}: architecture", "",
             f"Each layer one 3 × {CROP} × {CROP} image goes through, in order; output shapes include the batch of 1.",
             "", "| layer | type | output shape | parameters | trainable |", "|---|---|---|---:|---:|"]
    for name, kind, shape, parameters, trained in rows:
        shown = " × ".join(map(str, shape)) if shape else "–"
        lines.append(f"| `{name}` | {kind} | {shown} | {parameters:,} | {trained:,} |")
    lines.append(f"| **total** | | | **{total:,}** | **{trainable:,}** |")
    return "\n".join(lines) + "\n"
