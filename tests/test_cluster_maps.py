"""Task 3's cluster maps: the soft assignment NetVLAD computes, each cluster's share of the
descriptors, and the figure, down to a test split of one image."""
import torch

from common.cluster_maps import USED, assignments, first_of_each_class, plot_cluster_maps
from common.data import Split
from common.models import ShallowNetVLAD


def split_of(images, labels):
    return Split(images, torch.tensor(labels), [f"{i}.png" for i in range(len(labels))], [f"{i:040x}" for i in range(len(labels))])


def random_images(n, size=40, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_assignments_are_the_layers_own_weights():
    model = ShallowNetVLAD(3, 4).eval()
    images = random_images(5)
    maps, share, largest = assignments(model, [images[:2], images[2:]], torch.device("cpu"))
    features = model.features(images[:2])
    x = torch.nn.functional.normalize(features, dim=1).permute(0, 2, 3, 1).flatten(1, 2)
    expected = model.netvlad.soft_assign(x).transpose(1, 2).reshape(maps.shape)
    assert maps.shape == (2, 4, *features.shape[2:]) and torch.allclose(maps, expected)
    assert torch.allclose(maps.sum(dim=1), torch.ones(1)) and abs(share.sum().item() - 1) < 1e-6
    assert 1 / 4 <= largest <= 1


def test_a_collapsed_layer_uses_one_cluster():
    model = ShallowNetVLAD(3, 8).eval()
    with torch.no_grad():
        model.netvlad.conv.bias.zero_()[5] = 1e4  # every descriptor goes to cluster 5
    _, share, largest = assignments(model, [random_images(3)], torch.device("cpu"))
    assert share[5] == 1 and int((share >= USED).sum()) == 1 and largest == 1


def test_the_figure_draws_the_first_image_of_each_class(tmp_path):
    labels = [2, 0, 0, 1, 2]
    assert first_of_each_class(torch.tensor(labels), 4) == [0, 1, 3]
    path = tmp_path / "cluster_maps.png"
    used = plot_cluster_maps(path, ShallowNetVLAD(3, 4), split_of(random_images(5), labels), ["a", "b", "c"],
                             "tiny", torch.device("cpu"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 1 <= used <= 4


def test_a_test_split_of_one_image_is_drawn(tmp_path):
    path = tmp_path / "one.png"
    assert plot_cluster_maps(path, ShallowNetVLAD(2, 16), split_of(random_images(1), [1]), ["a", "b"], "one",
                             torch.device("cpu")) >= 1
    assert path.stat().st_size > 0
