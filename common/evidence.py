"""A task's test predictions over its seeds, and what REPORT.md shows of them beyond the mean: 95 %
intervals, per-class accuracy, the confusion matrix summed over seeds, the test images it gets
wrong most confidently, and the summary figure of every task."""
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch

from common import results, stats
from common.data import open_rgb

TOP_LOSSES = 12  # images in a task's figure of confident mistakes


@dataclass
class Evidence:
    """Every seed's test predictions: seed x image (all seeds are tested on the same number of images;
    with --resplit, on other images)."""
    paths: list                # per seed, the test images' paths
    sha1s: list                # per seed, their content's sha1: the same images, whatever their paths
    labels: np.ndarray         # seeds x images
    probabilities: np.ndarray  # seeds x images x classes
    classes: list
    intervals: dict = field(default_factory=dict, repr=False)  # k -> interval: 10,000 resamples, drawn once

    def correct(self, k=1):
        """seeds x images: 1 where the true class is among the k most probable."""
        top = np.argsort(-self.probabilities, axis=2)[:, :, :min(k, len(self.classes))]
        return (top == self.labels[:, :, None]).any(axis=2).astype(np.float64)

    def interval(self, k=1):
        """(top-k accuracy, low, high) in %: the mean and its 95 % interval over test images and seeds."""
        if k not in self.intervals:
            self.intervals[k] = stats.accuracy_interval(self.correct(k))
        return self.intervals[k]

    def tested_like(self, other):
        """Whether seed s of both was tested on the same images (by content), for every seed they share."""
        return all(mine == theirs for mine, theirs in zip(self.sha1s, other.sha1s))

    def per_class(self):
        """Each class's test accuracy in %, over every seed's images of that class."""
        correct = self.correct()
        return [100 * float(correct[self.labels == c].mean()) if (self.labels == c).any() else float("nan")
                for c in range(len(self.classes))]

    def confusion(self):
        """The test confusion matrix summed over seeds: counts, a row per true class (as results.confusion_matrix)."""
        n = len(self.classes)
        predicted = self.probabilities.argmax(axis=2)
        return torch.from_numpy(np.bincount((self.labels * n + predicted).ravel(), minlength=n * n).reshape(n, n))

    def top_losses(self, k=TOP_LOSSES):
        """The k test images predicted wrong with the highest probability, over all seeds, each image
        once (at its most confident mistake): (path, true class, predicted class, probability, seeds
        that got it wrong)."""
        predicted = self.probabilities.argmax(axis=2)
        confidence = self.probabilities.max(axis=2)
        mistakes = {}  # image sha1 -> (its most confident mistake, seeds that got it wrong)
        for s, i in zip(*np.nonzero(predicted != self.labels)):
            mistake = (self.paths[s][i], self.classes[self.labels[s, i]], self.classes[predicted[s, i]],
                       float(confidence[s, i]))
            worst, seeds = mistakes.get(self.sha1s[s][i], (mistake, 0))
            mistakes[self.sha1s[s][i]] = (max(worst, mistake, key=lambda m: m[3]), seeds + 1)
        ranked = sorted(mistakes.values(), key=lambda item: -item[0][3])[:k]
        return [(*mistake, seeds) for mistake, seeds in ranked]


def read_evidence(runs):
    """The Evidence of a task's run folders (seed 0, 1, ...); an OSError where a run has no
    test_predictions.csv (one made before runs wrote it), a ValueError where they do not fit together."""
    read = [results.read_predictions(run) for run in runs]
    classes = read[0][4]
    if any(r[4] != classes for r in read) or len({len(r[0]) for r in read}) != 1:
        raise ValueError("its runs' test_predictions.csv hold other classes or image counts")
    return Evidence([r[0] for r in read], [r[1] for r in read], np.stack([r[2].numpy() for r in read]),
                    np.stack([r[3].numpy() for r in read]), classes)


def plot_summary(path, rows):
    """Test top-1 per model with its 95 % interval, best first; the 2020 report's number beside it.
    rows: (title, top-1, low, high, the 2020 report's top-1 or None)."""
    rows = sorted(rows, key=lambda row: row[1])
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.45 * len(rows)))
    y = np.arange(len(rows))
    means = np.array([row[1] for row in rows])
    errors = np.array([[row[1] - row[2] for row in rows], [row[3] - row[1] for row in rows]])
    ax.errorbar(means, y, xerr=errors, fmt="o", color="tab:blue", capsize=4, label="ours, 95 % interval")
    reported = [(row[4], i) for i, row in enumerate(rows) if row[4] is not None]
    if reported:
        ax.plot(*zip(*reported), "D", color="tab:red", label="the 2020 report (one run, its own test set)")
    ax.set_yticks(y, [row[0] for row in rows])
    ax.set(xlabel="test top-1 (%)", xlim=(0, 101), title="Test top-1 with 95 % intervals (test images and seeds)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.5 / len(rows)), ncol=2)
    results.save_figure(fig, path)


def plot_top_losses(path, mistakes, title):
    """The images of `mistakes` (Evidence.top_losses) with true class, predicted class and probability."""
    columns = 4
    rows = max(1, -(-len(mistakes) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image_path, true, predicted, probability, seeds) in zip(axes.ravel(), mistakes):
        try:
            image = open_rgb(image_path)
            image.thumbnail((224, 224))
            ax.imshow(image)
        except OSError:  # the split was deleted since: the caption still says what went wrong
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"true {true}\npredicted {predicted} ({100 * probability:.0f} %)"
                     + (f"\nwrong in {seeds} seeds" if seeds > 1 else ""), fontsize=8)
    fig.suptitle(title, fontsize=10)
    results.save_figure(fig, path)

