"""How sure a test accuracy is, and whether two models differ: what REPORT.md and the studies say.

The input is which test images each run classified correctly: an S x N array of 0/1, one row per
seed (training run), one column per test image. Two sources of chance move a test accuracy: the
test images drawn (47 in the demo: one image is 2.1 points) and the training run's randomness
(the seed). Both are resampled below; everything is deterministic for a given `seed`.

- accuracy_interval: a 95 % percentile bootstrap interval, drawing S seeds and N images with
  replacement in each resample (the same images for every drawn seed: all runs are tested on the
  same images). It assumes the test images and the seeds are samples of those a user would meet.
- paired_difference: model A against model B on the same images, seed s against seed s: the
  difference in accuracy with the same kind of interval (images and seeds drawn once for both),
  and the exact p-value of a paired sign-flip permutation test on each image's difference
  averaged over seeds. With one seed it is the exact McNemar test.

Under K-fold cross-validation repeated R times every image is tested once per repetition, by the
model of its fold, and the unit is the fold's accuracy (docs/statistics.md, "Under cross-validation"):

- fold_accuracies: the R x K per-fold accuracies from per-image correctness and each image's fold.
- cv_interval, cv_paired_difference: the corrected repeated k-fold t-test (Nadeau & Bengio 2003;
  Bouckaert & Frank 2004) on the R*K per-fold values, for an interval and a paired comparison.
"""
import math

import numpy as np
from scipy.stats import t as student_t

CONFIDENCE = 0.95
RESAMPLES = 10_000
DRAWN_VALUES = 20_000_000  # resamples are drawn in chunks of about this many values (160 MB), whatever the test set
EXACT_WORK = 500_000_000  # beyond this (images x distribution width) the exact test gives way to its normal limit


def as_runs(correct):
    correct = np.asarray(correct, dtype=np.float64)
    if correct.ndim == 1:
        correct = correct[None]
    return correct


def bootstrap(statistic, runs, images, resamples, seed, drawn_values=DRAWN_VALUES):
    """`statistic` in each of `resamples` resamples of S runs and N images, drawn with replacement (the
    same images for every drawn run): statistic(run_picks n x S, image_picks n x N) gives n values."""
    rng = np.random.default_rng(seed)
    chunk = max(1, drawn_values // (runs * images))
    values = []
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        run_picks = rng.integers(runs, size=(n, runs))
        values.append(statistic(run_picks, rng.integers(images, size=(n, images))))
    return np.concatenate(values)


def bootstrap_means(correct, resamples, seed):
    """The mean of `correct` (S x N) in each resample of seeds and images."""
    def mean(run_picks, image_picks):
        per_image = correct[run_picks].mean(axis=1)  # n x N: the drawn seeds' mean
        return np.take_along_axis(per_image, image_picks, axis=1).mean(axis=1)
    return bootstrap(mean, *correct.shape, resamples, seed)


def percentile_interval(values):
    """The central 95 % of `values`, leaving out NaNs (resamples where a score is undefined); NaNs where all are."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def accuracy_interval(correct, resamples=RESAMPLES, seed=0):
    """(accuracy, low, high) in %: the mean over runs and images, and its 95 % bootstrap interval."""
    correct = as_runs(correct)
    low, high = percentile_interval(100 * bootstrap_means(correct, resamples, seed))
    return 100 * float(correct.mean()), low, high


def sign_flip_p(differences, scale):
    """Exact two-sided p-value that the per-image `differences` (multiples of 1/scale) are symmetric
    about 0: each image's difference flips sign with probability 1/2 under the null hypothesis."""
    steps = np.rint(np.abs(differences) * scale).astype(np.int64)
    steps = steps[steps > 0]
    total = int(steps.sum())
    observed = abs(int(np.rint(np.sum(differences) * scale)))
    if len(steps) * (2 * total + 1) > EXACT_WORK:  # tens of thousands of test images: the sum is normal
        spread = math.sqrt(float(np.sum(steps.astype(np.float64) ** 2)))
        return float(min(1.0, math.erfc(max(observed - 1, 0) / (spread * math.sqrt(2)))))  # continuity-corrected
    distribution = np.zeros(2 * total + 1)  # P(sum = k - total)
    distribution[total] = 1.0
    for step in steps:  # the sum's distribution, one image at a time
        distribution = (np.roll(distribution, step) + np.roll(distribution, -step)) / 2
    sums = np.arange(-total, total + 1)
    return float(min(1.0, distribution[np.abs(sums) >= observed].sum()))


def supported(low, high, p):
    """Whether a paired difference is one the data support: p < 0.05 and its interval excludes 0."""
    return p < 1 - CONFIDENCE and (low > 0 or high < 0)


def paired_difference(correct_a, correct_b, resamples=RESAMPLES, seed=0):
    """A's accuracy minus B's on the same images, in points: (difference, low, high, p). Seed s of
    A is paired with seed s of B (both trained on the same split); seeds beyond the shorter run list
    are left out."""
    a, b = as_runs(correct_a), as_runs(correct_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the two models were tested on {a.shape[1]} and {b.shape[1]} images")
    runs = min(len(a), len(b))
    differences = a[:runs] - b[:runs]
    low, high = percentile_interval(100 * bootstrap_means(differences, resamples, seed))
    p = sign_flip_p(differences.mean(axis=0), scale=runs)
    return 100 * float(differences.mean()), low, high, p



def fold_accuracies(correct, fold_of, folds):
    """R x K accuracies in %: fold k's mean of `correct` (R x N, 0/1) over the images that `fold_of`
    (R x N) puts in fold k, repetition by repetition."""
    return 100 * fold_means(correct, fold_of, folds)


def fold_means(values, fold_of, folds):
    """R x K: fold k's mean of the per-image `values` (R x N) over the images that `fold_of` (R x N) puts in fold k."""
    values, fold_of = as_runs(values), np.asarray(fold_of)
    if fold_of.ndim == 1:
        fold_of = fold_of[None]
    if values.shape != fold_of.shape:
        raise ValueError(f"the values have shape {values.shape}, the folds {fold_of.shape}")
    if not np.issubdtype(fold_of.dtype, np.integer) or fold_of.min() < 0 or fold_of.max() >= folds:
        raise ValueError(f"fold numbers must be integers from 0 to {folds - 1}")
    offsets = fold_of + folds * np.arange(len(fold_of))[:, None]  # one bin per (repetition, fold)
    tested = np.bincount(offsets.ravel(), minlength=folds * len(fold_of)).reshape(-1, folds)
    if (tested == 0).any():
        raise ValueError("a fold tested no image in some repetition: its mean is undefined")
    summed = np.bincount(offsets.ravel(), weights=values.ravel(), minlength=tested.size).reshape(-1, folds)
    return summed / tested


def corrected_t(fold_values, test_train_ratio):
    """(mean, standard error, degrees of freedom) of the R*K per-fold values under the corrected
    repeated k-fold t-test: Var(mean) = (1/(R*K) + n2/n1) s^2. The n2/n1 term stands for the
    correlation that the folds' overlapping training sets give their values, which s^2 misses."""
    values = np.asarray(fold_values, dtype=np.float64).ravel()
    if len(values) < 2:
        raise ValueError(f"{len(values)} per-fold value(s): the variance needs at least 2")
    if not (math.isfinite(test_train_ratio) and test_train_ratio >= 0):
        raise ValueError(f"test_train_ratio {test_train_ratio}: give a fold's test-to-training size ratio, >= 0")
    spread = (1 / len(values) + test_train_ratio) * values.var(ddof=1)
    return float(values.mean()), math.sqrt(spread), len(values) - 1


def cv_interval(fold_values, test_train_ratio):
    """(mean, low, high) in %: the mean of the per-fold accuracies (R x K, or flat) and its 95 % t
    interval with the corrected variance. test_train_ratio: a fold's test images over its training
    images (1 / (K - 1) where the other K - 1 folds all train)."""
    mean, error, freedom = corrected_t(fold_values, test_train_ratio)
    half = student_t.ppf((1 + CONFIDENCE) / 2, freedom) * error
    return mean, mean - half, mean + half


def cv_paired_difference(fold_a, fold_b, test_train_ratio):
    """A's per-fold accuracies minus B's (same shape; fold j of both tested on the same images), in
    points: (difference, low, high, p), the 95 % interval and the two-sided p-value of the
    corrected repeated k-fold t-test."""
    a, b = np.asarray(fold_a, dtype=np.float64), np.asarray(fold_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the per-fold accuracies have shapes {a.shape} and {b.shape}: pair them fold by fold")
    difference, error, freedom = corrected_t(a - b, test_train_ratio)
    if error == 0:  # every fold differs by the same amount (or not at all): t is undefined, no p to give
        return difference, difference, difference, 1.0 if difference == 0 else math.nan
    half = student_t.ppf((1 + CONFIDENCE) / 2, freedom) * error
    p = 2 * student_t.sf(abs(difference) / error, freedom)
    return difference, difference - half, difference + half, float(p)
