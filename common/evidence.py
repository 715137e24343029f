"""A task's test predictions over its runs, and what REPORT.md shows of them beyond the mean: 95 %
intervals of its accuracy and scores (common/scores.py), paired comparisons, per-class numbers, the
confusion matrix summed over runs, the test images it gets wrong most confidently, the majority-class
baseline, and the figures. Cross-validated, each repetition's folds are pooled: every image once per
repetition, with the fold that tested it.

The design decides the statistics (docs/statistics.md): seeds on one shared split are resampled by
the bootstrap over seeds and images; folds, and seeds that each drew their own split (--resplit),
by the corrected t-test over the per-fold (per-split) values, never averaging across different images."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch

from common import gradcam, results, scores, stats
from common.data import open_rgb, split_images
from common.errors import UserError
from common.files import read_json

TOP_LOSSES = 12  # images in a task's figure of confident mistakes


def balanced_accuracy(labels, predicted, confidence, groups, n_groups, classes):
    return 100 * scores.balanced_accuracy(scores.confusion_counts(labels, predicted, classes, groups, n_groups))


def macro_f1(labels, predicted, confidence, groups, n_groups, classes):
    return 100 * scores.macro_f1(scores.confusion_counts(labels, predicted, classes, groups, n_groups))


def kappa(labels, predicted, confidence, groups, n_groups, classes):
    return scores.kappa(scores.confusion_counts(labels, predicted, classes, groups, n_groups))


def calibration_error(labels, predicted, confidence, groups, n_groups, classes):
    return 100 * scores.expected_calibration_error(confidence, predicted == labels, groups, n_groups)


# REPORT.md's scores beyond accuracy: name -> (the score of each group of predictions (a run, a fold, a
# resample), the range it lies in: an interval is cut to it, as a t interval of a bounded score may leave it)
SCORES = {"balanced accuracy": (balanced_accuracy, (0, 100)), "macro-F1": (macro_f1, (0, 100)),
          "Cohen's kappa": (kappa, (-1, 1)), "ECE": (calibration_error, (0, 100))}


@dataclass
class Evidence:
    """The test predictions of a task's runs, a row per seed: on one split, each seed's run (all tested
    on the same number of images; with --resplit, each on its own split's); cross-validated, each
    repetition's folds pooled, every image once, `fold_of` saying which fold's run tested it. Seeds on
    their own splits are read as repetitions of one fold each: fold_of all 0, a row per split."""
    paths: list                # per row, the test images' paths
    sha1s: list                # per row, their content's sha1: the same images, whatever their paths
    labels: np.ndarray         # rows x images
    probabilities: np.ndarray  # rows x images x classes
    classes: list
    fold_of: np.ndarray = None  # rows x images: the fold that tested each image; None on one split
    test_train_ratio: float = None  # a fold's test images per training image (cross-validated)
    intervals: dict = field(default_factory=dict, repr=False)  # top-k or score name -> interval: computed once

    def correct(self, k=1):
        """seeds x images: 1 where the true class is among the k most probable."""
        # stable: of equally probable classes the first counts (the baseline's tied class frequencies)
        top = np.argsort(-self.probabilities, axis=2, kind="stable")[:, :, :min(k, len(self.classes))]
        return (top == self.labels[:, :, None]).any(axis=2).astype(np.float64)

    def fold_accuracies(self, k=1):
        """repetitions x folds: each fold's top-k accuracy in % (cross-validated)."""
        return stats.fold_accuracies(self.correct(k), self.fold_of, int(self.fold_of.max()) + 1)

    def interval(self, k=1):
        """(top-k accuracy, low, high) in %: on one split the mean over seeds and test images with its
        95 % bootstrap interval; cross-validated the mean over folds with its corrected t interval."""
        if k not in self.intervals:
            value, low, high = stats.accuracy_interval(self.correct(k)) if self.fold_of is None else \
                stats.cv_interval(self.fold_accuracies(k), self.test_train_ratio)
            self.intervals[k] = (value, *np.clip([low, high], 0, 100).tolist())  # a t interval may run past them
        return self.intervals[k]

    def score(self, name):
        """(value, low, high) of SCORES[name], NaN where it is undefined: on one split each seed's
        score, their mean, and the bootstrap interval over seeds and images; cross-validated (or on a
        split per seed) each fold's score, their mean, and the corrected t interval."""
        if name not in self.intervals:
            (score, bounds), predicted = SCORES[name], self.probabilities.argmax(axis=2)
            confidence = self.probabilities.max(axis=2)
            classes, (runs, images) = len(self.classes), self.labels.shape
            if self.fold_of is None:
                def resampled(run_picks, image_picks):  # n x S drawn seeds, n x N drawn images
                    picked = (run_picks[:, :, None], image_picks[:, None, :])
                    groups = np.arange(run_picks.size).reshape(run_picks.shape)[:, :, None]
                    return score(self.labels[picked], predicted[picked], confidence[picked], groups, run_picks.size,
                                 classes).reshape(run_picks.shape).mean(axis=1)
                value = score(self.labels, predicted, confidence, np.arange(runs)[:, None], runs, classes).mean()
                resamples = stats.bootstrap(resampled, runs, images, stats.RESAMPLES, seed=0,
                                            drawn_values=stats.DRAWN_VALUES // 8)  # each drawn value is indexed 8 times
                value, low, high = float(value), *stats.percentile_interval(resamples)
            else:
                folds = int(self.fold_of.max()) + 1
                groups = self.fold_of + folds * np.arange(runs)[:, None]
                per_fold = score(self.labels, predicted, confidence, groups, runs * folds, classes)
                defined = per_fold[~np.isnan(per_fold)]  # a fold of one class has no kappa: the others count
                value, low, high = (stats.cv_interval(defined, self.test_train_ratio) if len(defined) > 1 else
                                    (float(np.mean(defined)) if len(defined) else np.nan, np.nan, np.nan))
            self.intervals[name] = (value, *np.clip([low, high], *bounds).tolist())
        return self.intervals[name]

    def compare(self, other):
        """This model's test top-1 minus `other`'s, paired on the same images, runs and folds (tested_like):
        (difference in points, low, high, p), by the test docs/statistics.md describes for the design."""
        if self.fold_of is None:
            return stats.paired_difference(self.correct(), other.correct())
        rows = min(len(self.labels), len(other.labels))
        difference, low, high, p = stats.cv_paired_difference(self.fold_accuracies()[:rows],
                                                              other.fold_accuracies()[:rows], self.test_train_ratio)
        return (difference, *np.clip([low, high], -100, 100).tolist(), p)

    def tested_like(self, other):
        """Whether row s of both was tested on the same images (by content), and cross-validated in the
        same folds, for every row they share."""
        if (self.fold_of is None) != (other.fold_of is None):
            return False
        rows = min(len(self.labels), len(other.labels))
        same_folds = self.fold_of is None or np.array_equal(self.fold_of[:rows], other.fold_of[:rows])
        return same_folds and all(mine == theirs for mine, theirs in zip(self.sha1s, other.sha1s))

    def per_class(self):
        """Per class over every run's test images: (distinct test images, image-runs, precision, recall,
        F1), the last three in % (NaN where undefined: a class never predicted has no precision)."""
        precision, recall, f1, support = scores.per_class(self.labels, self.probabilities.argmax(axis=2),
                                                          len(self.classes))
        distinct = [len({d for row, labels in zip(self.sha1s, self.labels) for d, label in zip(row, labels)
                         if label == c}) for c in range(len(self.classes))]
        return list(zip(distinct, support.tolist(), 100 * precision, 100 * recall, 100 * f1))

    def most_predicted(self):
        """(class index, its share of all test predictions, its share of the true labels), in %."""
        predicted = np.bincount(self.probabilities.argmax(axis=2).ravel(), minlength=len(self.classes))
        top = int(predicted.argmax())
        return top, 100 * predicted[top] / predicted.sum(), 100 * float((self.labels == top).mean())

    def calibration(self):
        """Over every run's test images, per confidence bin (scores.calibration_bins): (images, mean
        top-1 confidence, top-1 accuracy), NaN for an empty bin."""
        correct = self.probabilities.argmax(axis=2) == self.labels
        images, confidence, right = (b[0] for b in scores.calibration_bins(
            self.probabilities.max(axis=2), correct, np.zeros(self.labels.shape, dtype=np.int64), 1))
        return images, scores.ratio(confidence, images), scores.ratio(right, images)

    def run_metrics(self):
        """Each run's (each fold's) test logloss, top-1 and top-3, as results.mean_std takes them."""
        loss = -np.log(np.take_along_axis(self.probabilities, self.labels[:, :, None], axis=2)[:, :, 0])
        fold_of = np.zeros(self.labels.shape, dtype=np.int64) if self.fold_of is None else self.fold_of
        folds = int(fold_of.max()) + 1
        top1, top3 = (stats.fold_accuracies(self.correct(k), fold_of, folds).ravel() for k in (1, 3))
        losses = stats.fold_means(loss, fold_of, folds).ravel()
        return [{"test": {"loss": float(l), "top1": float(a), "top3": float(b)}} for l, a, b in zip(losses, top1, top3)]

    def confusion(self):
        """The test confusion matrix summed over seeds: counts, a row per true class (as results.confusion_matrix)."""
        counts = scores.confusion_counts(self.labels, self.probabilities.argmax(axis=2), len(self.classes), 0, 1)
        return torch.from_numpy(counts[0])

    def top_losses(self, k=TOP_LOSSES):
        """The k test images predicted wrong with the highest probability, over all seeds, each image
        once (at its most confident mistake), as Mistakes."""
        predicted = self.probabilities.argmax(axis=2)
        confidence = self.probabilities.max(axis=2)
        fold_of = np.zeros(self.labels.shape, dtype=np.int64) if self.fold_of is None else self.fold_of
        folds = int(fold_of.max()) + 1
        mistakes = {}  # image sha1 -> (its most confident mistake, seeds that got it wrong)
        for s, i in zip(*np.nonzero(predicted != self.labels)):
            mistake = Mistake(self.paths[s][i], self.classes[self.labels[s, i]], self.classes[predicted[s, i]],
                              float(confidence[s, i]), 0, int(s * folds + fold_of[s, i]), self.sha1s[s][i])
            worst, seeds = mistakes.get(self.sha1s[s][i], (mistake, 0))
            mistakes[self.sha1s[s][i]] = (max(worst, mistake, key=lambda m: m.probability), seeds + 1)
        ranked = sorted(mistakes.values(), key=lambda item: -item[0].probability)[:k]
        return [mistake._replace(seeds=seeds) for mistake, seeds in ranked]


class Mistake(NamedTuple):
    """A test image predicted wrong: its path, true and predicted class, the predicted probability,
    how many seeds (repetitions) got it wrong, which run made this mistake (its index in the runs
    read_evidence read: repetition r's fold k is r * K + k) and the sha1 of the image it tested."""
    path: str
    true: str
    predicted: str
    probability: float
    seeds: int
    run: int
    sha1: str


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
    if not rows[0][0]:
        raise ValueError("its runs' test_predictions.csv hold no test image")
    paths, sha1s, labels, probabilities, fold_of = zip(*rows)
    own_splits = folds == 1 and any(row != sha1s[0] for row in sha1s)  # --resplit: each seed its own test images
    shared = folds == 1 and not own_splits
    return Evidence(list(paths), list(sha1s), np.stack(labels), np.stack(probabilities), classes,
                    None if shared else np.stack(fold_of), None if shared else test_train_ratio(runs))


def majority_baseline(evidence, runs):
    """The Evidence of always answering the largest class of each run's training images (for top-3,
    the three largest), with the training class frequencies as its probabilities (its logloss is the
    class prior's), on the same test images, runs and folds as `evidence` (read from `runs`). A
    ValueError where a run's training folder is gone or holds other classes."""
    priors = np.stack([training_frequencies(run, evidence.classes) for run in runs])
    rows, images = evidence.labels.shape
    folds = len(runs) // rows
    run_of = np.arange(rows)[:, None] * folds + (0 if evidence.fold_of is None else evidence.fold_of)
    return Evidence(evidence.paths, evidence.sha1s, evidence.labels, priors[np.broadcast_to(run_of, (rows, images))],
                    evidence.classes, evidence.fold_of, evidence.test_train_ratio)


def training_frequencies(run, classes):
    """The share of each class among the training images of `run` (its config.json's data folder)."""
    data = read_json(run / "config.json").get("data")
    if not isinstance(data, str):
        raise ValueError(f"{run / 'config.json'} names no data folder")
    train = Path(data) / "train"
    if not train.is_dir():
        raise ValueError(f"the training images of {run} ({train}) are gone")
    try:
        names, samples = split_images(train)
    except (OSError, UserError) as e:
        raise ValueError(f"the training images of {run}: {e}") from None
    if names != classes:
        raise ValueError(f"{train} holds other classes than the run trained on")
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    if not counts.all():
        raise ValueError(f"{train} holds no image of class {classes[int(np.argmin(counts))]!r} now")
    return counts / counts.sum()


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


def plot_summary(path, rows, over, baseline=None):
    """Test top-1 per model with its 95 % interval (`over` what), best first; the 2020 report's number
    beside it. rows: (title, top-1, low, high, the 2020 report's top-1 or None); baseline: (title,
    top-1), drawn as a line."""
    rows = sorted(rows, key=lambda row: row[1])
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.45 * len(rows)))
    y = np.arange(len(rows))
    means = np.array([row[1] for row in rows])
    errors = np.array([[row[1] - row[2] for row in rows], [row[3] - row[1] for row in rows]])
    ax.errorbar(means, y, xerr=errors, fmt="o", color="tab:blue", capsize=4, label="ours, 95 % interval")
    reported = [(row[4], i) for i, row in enumerate(rows) if row[4] is not None]
    if reported:
        ax.plot(*zip(*reported), "D", color="tab:red", label="the 2020 report (one run, its own test set)")
    if baseline:
        ax.axvline(baseline[1], color="0.4", linestyle="--", label=f"{baseline[0]}: {baseline[1]:.1f} %")
    ax.set_yticks(y, [row[0] for row in rows])
    ax.set(xlabel="test top-1 (%)", xlim=(0, 101), title=f"Test top-1 with 95 % intervals ({over})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.5 / len(rows)), ncol=2)
    results.save_figure(fig, path)


def plot_reliability(path, images, confidence, accuracy, title):
    """The reliability diagram: each confidence bin's top-1 accuracy against its mean confidence (on
    the diagonal where they match), each point sized and labelled by its images."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    shown = images > 0
    ax.scatter(confidence[shown], accuracy[shown], s=20 + 200 * images[shown] / max(images.sum(), 1),
               color="tab:blue", label="confidence bins")
    for x, y, n in zip(confidence[shown], accuracy[shown], images[shown]):
        ax.annotate(f"{int(n)}", (x, y), textcoords="offset points", xytext=(5, -10), fontsize=7)
    ax.set(xlabel="mean top-1 confidence", ylabel="top-1 accuracy", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    results.save_figure(fig, path)


def plot_top_losses(path, mistakes, title, explained=None):
    """The images of `mistakes` (Evidence.top_losses) with true class, predicted class and probability.
    explained: per mistake, None (the image drawn as it is now) or (the 224 x 224 crop its run saw,
    the Grad-CAM heat map of the class predicted), drawn over each other (common/gradcam.py), or
    why its image is not shown."""
    columns = 4
    rows = max(1, -(-len(mistakes) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, mistake, heat in zip(axes.ravel(), mistakes, explained or [None] * len(mistakes)):
        if isinstance(heat, str):  # why its image cannot be shown
            ax.text(0.5, 0.5, heat, ha="center", va="center", transform=ax.transAxes)
        elif heat is not None:
            gradcam.draw(ax, *heat)
        else:
            try:
                image = open_rgb(mistake.path)
                image.thumbnail((224, 224))
                ax.imshow(image)
            except OSError:  # the split was deleted since: the caption still says what went wrong
                ax.text(0.5, 0.5, "image not found", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"true {mistake.true}\npredicted {mistake.predicted} ({100 * mistake.probability:.0f} %)"
                     + (f"\nwrong in {mistake.seeds} seeds" if mistake.seeds > 1 else ""), fontsize=8)
    if explained and any(isinstance(heat, tuple) for heat in explained):
        title += "\n(Grad-CAM: red is where the run's model found the evidence for the class it predicted)"
    fig.suptitle(title, fontsize=10)
    results.save_figure(fig, path)
