"""A task's test predictions over its runs, and what REPORT.md shows of them beyond the mean: 95 %
intervals, paired comparisons, per-class accuracy, the confusion matrix summed over runs, the test
images it gets wrong most confidently, and the summary figure of every task. Cross-validated, each
repetition's folds are pooled: every image once per repetition, with the fold that tested it."""
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch

from common import results, stats
from common.data import open_rgb
from common.files import read_json

TOP_LOSSES = 12  # images in a task's figure of confident mistakes


@dataclass
class Evidence:
    """The test predictions of a task's runs, a row per seed: on one split, each seed's run (all tested
    on the same number of images; with --resplit, on other images); cross-validated, each repetition's
    folds pooled, every image once, `fold_of` saying which fold's run tested it."""
    paths: list                # per row, the test images' paths
    sha1s: list                # per row, their content's sha1: the same images, whatever their paths
    labels: np.ndarray         # rows x images
    probabilities: np.ndarray  # rows x images x classes
    classes: list
    fold_of: np.ndarray = None  # rows x images: the fold that tested each image; None on one split
    test_train_ratio: float = None  # a fold's test images per training image (cross-validated)
    intervals: dict = field(default_factory=dict, repr=False)  # k -> interval: computed once

    def correct(self, k=1):
        """seeds x images: 1 where the true class is among the k most probable."""
        top = np.argsort(-self.probabilities, axis=2)[:, :, :min(k, len(self.classes))]
        return (top == self.labels[:, :, None]).any(axis=2).astype(np.float64)

    def fold_accuracies(self, k=1):
        """repetitions x folds: each fold's top-k accuracy in % (cross-validated)."""
        return stats.fold_accuracies(self.correct(k), self.fold_of, int(self.fold_of.max()) + 1)

    def interval(self, k=1):
        """(top-k accuracy, low, high) in %: on one split the mean over seeds and test images with its
        95 % bootstrap interval; cross-validated the mean over folds with its corrected t interval."""
        if k not in self.intervals:
            self.intervals[k] = stats.accuracy_interval(self.correct(k)) if self.fold_of is None else \
                stats.cv_interval(self.fold_accuracies(k), self.test_train_ratio)
        return self.intervals[k]

    def compare(self, other):
        """This model's test top-1 minus `other`'s, paired on the same images, runs and folds (tested_like):
        (difference in points, low, high, p), by the test docs/statistics.md describes for the design."""
        if self.fold_of is None:
            return stats.paired_difference(self.correct(), other.correct())
        rows = min(len(self.labels), len(other.labels))
        return stats.cv_paired_difference(self.fold_accuracies()[:rows], other.fold_accuracies()[:rows],
                                          self.test_train_ratio)

    def tested_like(self, other):
        """Whether row s of both was tested on the same images (by content), and cross-validated in the
        same folds, for every row they share."""
        if (self.fold_of is None) != (other.fold_of is None):
            return False
        rows = min(len(self.labels), len(other.labels))
        same_folds = self.fold_of is None or np.array_equal(self.fold_of[:rows], other.fold_of[:rows])
        return same_folds and all(mine == theirs for mine, theirs in zip(self.sha1s, other.sha1s))

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


def read_evidence(runs, folds=1):
    """The Evidence of a task's run folders, in order: seed 0, 1, ... on one split; cross-validated
    (folds > 1) repetition 0's folds 0..K-1, then repetition 1's, ... An OSError where a run has no
    test_predictions.csv (one made before runs wrote it), a ValueError where they do not fit together."""
    read = [results.read_predictions(run) for run in runs]
    classes = read[0][4]
    if any(r[4] != classes for r in read):
        raise ValueError("its runs' test_predictions.csv hold other classes")
    rows = [pooled(read[start:start + folds]) for start in range(0, len(read), folds)]
    if len({len(paths) for paths, *_ in rows}) != 1:
        raise ValueError("its runs' test_predictions.csv hold other image counts")
    paths, sha1s, labels, probabilities, fold_of = zip(*rows)
    return Evidence(list(paths), list(sha1s), np.stack(labels), np.stack(probabilities), classes,
                    None if folds == 1 else np.stack(fold_of), None if folds == 1 else test_train_ratio(runs))


def pooled(read):
    """The predictions of one repetition's folds (or of one run) as one row: paths, sha1s, labels,
    probabilities and the fold of each image."""
    return ([p for r in read for p in r[0]], [d for r in read for d in r[1]],
            np.concatenate([r[2].numpy() for r in read]), np.concatenate([r[3].numpy() for r in read]),
            np.concatenate([np.full(len(r[0]), fold) for fold, r in enumerate(read)]))


def test_train_ratio(runs):
    """A fold's test images per training image, over the runs (their config.json's split sizes)."""
    sizes = [read_json(run / "config.json").get("split_sizes") for run in runs]
    try:
        return sum(s["test"] for s in sizes) / sum(s["train"] for s in sizes)
    except (TypeError, KeyError, ZeroDivisionError):
        raise ValueError("a run's config.json lacks its split sizes") from None


def plot_summary(path, rows, over):
    """Test top-1 per model with its 95 % interval (`over` what), best first; the 2020 report's number
    beside it. rows: (title, top-1, low, high, the 2020 report's top-1 or None)."""
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
    ax.set(xlabel="test top-1 (%)", xlim=(0, 101), title=f"Test top-1 with 95 % intervals ({over})")
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

