"""Layer tables: each layer an image goes through, its output shape and parameters, and totals that
are the model's (the report's 23,332,711 for Figure 8)."""
import torch
import torch.nn as nn

from common.architecture import MAX_ROWS, architecture_markdown, layer_rows, table_depth
from common.models import ShallowConvNet, ShallowConvolutions, ShallowNetVLAD


def test_shallow_convnet_is_figure_8():
    rows = layer_rows(ShallowConvNet(7))
    assert [(kind, shape[1:]) for _, kind, shape, _, _ in rows] == [
        ("Conv2d", (4, 222, 222)), ("ReLU", (4, 222, 222)), ("AvgPool2d", (4, 111, 111)),
        ("Conv2d", (16, 109, 109)), ("ReLU", (16, 109, 109)), ("AvgPool2d", (16, 54, 54)), ("Flatten", (46656,)),
        ("Linear", (500,)), ("ReLU", (500,)), ("Dropout", (500,)), ("Linear", (7,)), ("LogSoftmax", (7,))]
    assert sum(row[3] for row in rows) == 23_332_711
    assert "| **total** | | | **23,332,711** | **23,332,711** |" in architecture_markdown(ShallowConvNet(7), "task 2")


def test_netvlad_layer_counts_its_centres():
    for clusters in (4, 16):
        rows = layer_rows(ShallowNetVLAD(7, clusters))
        assert sum(row[3] for row in rows) == 704 + 33 * clusters + 16 * clusters * 7 + 7  # 1,291 and 3,031
        assert ("netvlad", "NetVLAD", (1, 16 * clusters)) in [row[:3] for row in rows]


def test_the_model_itself_is_left_as_it_was():
    model = ShallowConvNet(7)
    before = [p.clone() for p in model.parameters()]
    layer_rows(model)
    assert type(model.features[0]) is ShallowConvolutions  # the fused convolutions, not the plain copy's
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and model.training


class Floats(nn.Module):
    """uint8 images in, as the models' own inputs (common.data.model_input) take them."""

    def forward(self, images):
        return images.float()


class Scaled(nn.Module):
    """A parameter of its own beside a child: listed once, with both."""

    def __init__(self):
        super().__init__()
        self.scale, self.inner = nn.Parameter(torch.ones(1)), nn.Linear(2, 2)

    def forward(self, x):
        return self.inner(x) * self.scale


def test_a_module_with_parameters_of_its_own_is_one_row():
    model = nn.Sequential(Floats(), nn.Flatten(), nn.LazyLinear(2), Scaled())
    model(torch.zeros(1, 3, 224, 224))  # the lazy layer's shape
    rows = layer_rows(model)
    assert [row[:2] for row in rows] == [("0", "Floats"), ("1", "Flatten"), ("2", "Linear"), ("3", "Scaled")]
    assert rows[3][3] == 7 and sum(row[3] for row in rows) == sum(p.numel() for p in model.parameters())


def test_a_deep_model_is_listed_by_blocks_and_frozen_parameters_are_not_trainable():
    blocks = [nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()) for _ in range(MAX_ROWS)]  # 2 x MAX_ROWS leaves
    model = nn.Sequential(Floats(), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    blocks[0].requires_grad_(False)
    assert table_depth(model) == 1  # every leaf would be 2 x MAX_ROWS + 4 rows
    rows = layer_rows(model)
    assert len(rows) == MAX_ROWS + 4 and rows[1][:3] == ("1", "Sequential", (1, 3, 224, 224))
    total = sum(p.numel() for p in model.parameters())
    assert sum(row[3] for row in rows) == total and sum(row[4] for row in rows) == total - 12
    assert f"**{total:,}** | **{total - 12:,}** |" in architecture_markdown(model, "deep")
