"""What test predictions say beyond top-k accuracy: balanced accuracy, macro-F1, Cohen's kappa and
the expected calibration error (ECE), per class precision, recall and F1, the most confused pairs,
and Holm's adjustment of a family of p-values.

The scores are computed for many groups of predictions at once (a group is one run, one fold, or
one bootstrap resample of one run: REPORT.md draws thousands), from their confusion matrices.
tests/test_scores.py checks each against scikit-learn, which computes one group per call. A score
that is undefined for a group (no two classes to agree on, no images) is NaN there.
"""
import numpy as np
from sklearn.metrics import precision_recall_fscore_support

CALIBRATION_BINS = 10  # equal-width confidence bins of ECE and the reliability diagram
CONFUSED_PAIRS = 5  # REPORT.md's most confused (true, predicted) pairs per model


def confusion_counts(labels, predicted, classes, groups, n_groups):
    """n_groups x classes x classes counts, a row per true class; `groups` says which group each
    prediction belongs to (arrays of one shape)."""
    index = (np.asarray(groups) * classes + np.asarray(labels)) * classes + np.asarray(predicted)
    return np.bincount(index.ravel(), minlength=n_groups * classes * classes).reshape(n_groups, classes, classes)


def ratio(numerator, denominator):
    """numerator / denominator, NaN where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def mean_of_defined(values):
    """The mean of each row's non-NaN values, NaN for a row without any."""
    defined = ~np.isnan(values)
    return ratio(np.where(defined, values, 0).sum(axis=1), defined.sum(axis=1))


def balanced_accuracy(counts):
    """The mean recall over the classes each group has true images of (scikit-learn's balanced_accuracy_score)."""
    return mean_of_defined(ratio(np.diagonal(counts, axis1=1, axis2=2), counts.sum(axis=2)))


def macro_f1(counts):
    """The mean F1 over the classes each group has as a true or a predicted class (f1_score's macro average)."""
    hits = np.diagonal(counts, axis1=1, axis2=2)
    true, predicted = counts.sum(axis=2), counts.sum(axis=1)
    return mean_of_defined(ratio(2 * hits, true + predicted))


def kappa(counts):
    """Cohen's kappa per group: (observed - chance agreement) / (1 - chance agreement), chance from the
    true and the predicted class frequencies; NaN where chance agreement is 1 (one class only)."""
    n = counts.sum(axis=(1, 2)).astype(np.float64)
    observed = ratio(np.trace(counts, axis1=1, axis2=2), n)
    chance = ratio((counts.sum(axis=2) * counts.sum(axis=1)).sum(axis=1), n * n)
    return ratio(observed - chance, 1 - np.where(np.isnan(chance), 1, chance))


def calibration_bins(confidence, correct, groups, n_groups, bins=CALIBRATION_BINS):
    """Per group and confidence bin ((0, 0.1], (0.1, 0.2], ...): (images, summed confidence, summed
    correctness), each n_groups x bins."""
    which = np.clip(np.ceil(np.asarray(confidence) * bins).astype(np.int64) - 1, 0, bins - 1)
    index = (np.asarray(groups) * bins + which).ravel()
    sums = [np.bincount(index, weights=w, minlength=n_groups * bins).reshape(n_groups, bins)
            for w in (np.ones(index.size), np.ravel(confidence), np.ravel(correct))]
    return tuple(sums)


def expected_calibration_error(confidence, correct, groups, n_groups, bins=CALIBRATION_BINS):
    """ECE per group: the image-weighted mean over confidence bins of |accuracy - mean confidence|, in
    [0, 1]; the top-1 confidence against whether the top-1 class is right."""
    images, confidence_sum, correct_sum = calibration_bins(confidence, correct, groups, n_groups, bins)
    return ratio(np.abs(correct_sum - confidence_sum).sum(axis=1), images.sum(axis=1))


def per_class(labels, predicted, classes):
    """(precision, recall, F1, true images) per class over the given predictions, NaN where a class
    was never predicted (precision) or never true (recall)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        np.ravel(labels), np.ravel(predicted), labels=range(classes), zero_division=np.nan)
    return precision, recall, f1, support


def confused_pairs(counts, k=CONFUSED_PAIRS):
    """The k largest off-diagonal cells of a confusion matrix (a row per true class), as (true,
    predicted, count) with count > 0, largest first, ties in class order (fastai's most_confused)."""
    counts = np.asarray(counts)
    off = counts * (1 - np.eye(len(counts), dtype=counts.dtype))
    order = np.argsort(-off.ravel(), kind="stable")[:k]
    return [(int(i // len(counts)), int(i % len(counts)), int(off.flat[i])) for i in order if off.flat[i] > 0]


def holm(p_values):
    """Holm's step-down adjustment of a family of p-values, in their order: the i-th smallest times
    (m - i), made non-decreasing, at most 1. It controls the chance of any false "supported" in the family."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, p[order] * (len(p) - np.arange(len(p)))))
    adjusted = np.empty_like(p)
    adjusted[order] = stepped
    return adjusted
