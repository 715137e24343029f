"""Task 3's picture of the report's Figure 11: where NetVLAD softly assigns each region of an image
(the 109 x 109 grid of descriptors), how sharp that assignment is, and how many of its K clusters
the test images use at all."""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from common.results import save_figure  # noqa: E402

SHOWN_IMAGES = 4
USED = 0.01  # a cluster is used where it is the largest weight of at least 1 % of the test descriptors
USAGE_IMAGES = 1000  # the test images whose descriptors the usage counts (the first ones)


@torch.inference_mode()
def assignments(model, batches, device):
    """Over uint8 image batches: (the first batch's soft weights, B x K x h x w; each cluster's share of
    all descriptors whose largest weight it is; the mean largest weight)."""
    counts, largest, total, first = 0, 0.0, 0, None
    for images in batches:
        maps = model.netvlad.assignments(model.features(images.to(device))).cpu()
        first = maps if first is None else first
        top, winner = maps.max(dim=1)
        counts = counts + torch.bincount(winner.flatten(), minlength=maps.shape[1])
        largest, total = largest + top.sum().item(), total + top.numel()
    return first, counts / total, largest / total


def first_of_each_class(labels, n):
    """Indices of up to n images, the first of each class, in split order: rows that differ."""
    return sorted(int((labels == label).nonzero()[0]) for label in labels.unique().tolist())[:n]


def draw(model, run, title):
    """A run's cluster_maps.png (task 3's Prepared.pictures)."""
    used = plot_cluster_maps(run.out / "cluster_maps.png", model, run.data.test, run.data.classes, title, run.device)
    print(f"cluster_maps.png: {used} of {model.netvlad.num_clusters} NetVLAD clusters hold at least "
          f"{100 * USED:g} % of the test descriptors")


def plot_cluster_maps(path, model, split, classes, title, device):
    """cluster_maps.png: for a few test images, the image, the cluster each region goes to (its
    largest weight) and that weight; below, each cluster's share of the descriptors of the first
    USAGE_IMAGES test images. Returns the number of clusters used (USED or more of them)."""
    model.eval()
    picked = first_of_each_class(split.labels, SHOWN_IMAGES)
    images = split.read(torch.tensor(picked))
    maps, _, _ = assignments(model, [images], device)
    counted = torch.arange(min(len(split), USAGE_IMAGES)).split(50)
    _, usage, mean_largest = assignments(model, (split.read(idx) for idx in counted), device)
    clusters, used = maps.shape[1], int((usage >= USED).sum())
    fig, axes = plt.subplots(len(picked) + 1, 3, figsize=(9, 2.6 * len(picked) + 2.4), layout="constrained",
                             gridspec_kw={"height_ratios": [3] * len(picked) + [2]}, squeeze=False)
    palette = plt.get_cmap("tab20" if clusters <= 20 else "nipy_spectral", clusters)
    for row, (index, image_maps) in enumerate(zip(picked, maps)):
        top, winner = image_maps.max(dim=0)
        axes[row, 0].imshow(images[row].permute(1, 2, 0).numpy())
        axes[row, 0].set_title(f"{classes[int(split.labels[index])]}", fontsize=9)
        shown = axes[row, 1].imshow(winner.numpy(), cmap=palette, vmin=-0.5, vmax=clusters - 0.5, interpolation="nearest")
        axes[row, 1].set_title("cluster with the largest weight", fontsize=9)
        fig.colorbar(shown, ax=axes[row, 1], ticks=range(0, clusters, max(1, clusters // 8)), fraction=0.046)
        sharp = axes[row, 2].imshow(top.numpy(), cmap="viridis", vmin=1 / clusters, vmax=1)
        axes[row, 2].set_title("that weight (1/K: no preference)", fontsize=9)
        fig.colorbar(sharp, ax=axes[row, 2], fraction=0.046)
        for ax in axes[row]:
            ax.set_xticks([]), ax.set_yticks([])
    gs = axes[-1, 0].get_gridspec()
    for ax in axes[-1]:
        ax.remove()
    bars = fig.add_subplot(gs[-1, :])
    bars.bar(range(clusters), 100 * usage.numpy(), color=[palette(k) for k in range(clusters)])
    bars.axhline(100 * USED, color="gray", linestyle=":", linewidth=1)
    bars.set(xlabel="cluster", ylabel="% of test descriptors",
             title=f"{used} of {clusters} clusters hold at least {100 * USED:g} % of the test descriptors; "
                   f"mean largest weight {mean_largest:.2f}")
    fig.suptitle(f"{title}: NetVLAD's soft assignment over the descriptor grid", fontsize=10)
    save_figure(fig, path)
    return used
