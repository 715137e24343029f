"""common/stats.py against known values: the exact McNemar test, exact binomial tails, and intervals
that behave as intervals must."""
import math

import numpy as np
import scipy.stats
import pytest

from common import stats


def mcnemar_exact(only_a, only_b):
    """The textbook exact McNemar test: twice the binomial(n, 1/2) tail at the smaller discordant count."""
    n, k = only_a + only_b, min(only_a, only_b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def pair(both, only_a, only_b, neither):
    """Two models' per-image correctness for a 2 x 2 table of agreements."""
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return np.array([a]), np.array([b])


@pytest.mark.parametrize("only_a, only_b, expected", [(0, 5, 0.0625), (1, 9, 0.021484375), (3, 3, 1.0),
                                                      (10, 2, 0.0385742188)])
def test_one_seed_gives_the_exact_mcnemar_p_value(only_a, only_b, expected):
    a, b = pair(30, only_a, only_b, 7)
    difference, low, high, p = stats.paired_difference(a, b)
    assert p == pytest.approx(expected, abs=1e-9) and p == pytest.approx(mcnemar_exact(only_a, only_b))
    assert difference == pytest.approx(100 * (only_a - only_b) / a.shape[1])
    assert low <= difference <= high


def test_the_sign_flip_p_value_is_exact_for_differences_over_seeds():
    # two images differing by 1/2 and 1 (two seeds): sums -1.5 .. 1.5 in steps, each flip 1/2
    assert stats.sign_flip_p(np.array([0.5, 1.0]), scale=2) == pytest.approx(0.5)  # |sum| >= 1.5: 2 of 4
    assert stats.sign_flip_p(np.array([0.0, 0.0]), scale=2) == 1.0


def test_an_interval_holds_the_accuracy_narrows_with_more_images_and_repeats_for_a_seed():
    rng = np.random.default_rng(1)
    small, large = (rng.random((3, n)) < 0.6 for n in (50, 2000))
    accuracy, low, high = stats.accuracy_interval(small)
    assert low < accuracy < high and stats.accuracy_interval(small) == (accuracy, low, high)
    _, low_large, high_large = stats.accuracy_interval(large)
    assert high_large - low_large < (high - low) / 3  # about 1/sqrt(40) as wide
    one_run = stats.accuracy_interval(small[0])
    assert one_run[1] < one_run[0] < one_run[2]  # one run gets an interval from its images alone


def test_the_interval_of_a_binomial_accuracy_is_about_the_normal_approximation():
    correct = np.zeros(400)
    correct[:240] = 1  # 60 % of 400 images: the textbook half-width is 1.96 sqrt(.6 .4 / 400) = 4.8 points
    accuracy, low, high = stats.accuracy_interval(correct)
    assert accuracy == 60 and (high - low) / 2 == pytest.approx(4.8, abs=0.4)


def test_a_test_set_too_large_for_the_exact_test_gets_its_normal_limit(monkeypatch):
    a, b = pair(500, 60, 40, 100)
    exact = stats.paired_difference(a, b)[3]
    monkeypatch.setattr(stats, "EXACT_WORK", 0)  # as for tens of thousands of test images
    approximate = stats.paired_difference(a, b)[3]
    assert exact == pytest.approx(mcnemar_exact(60, 40)) and approximate == pytest.approx(exact, abs=0.01)


# cross-validation: the corrected repeated k-fold t-test (Nadeau & Bengio 2003)

def test_the_corrected_t_statistic_matches_a_hand_computation():
    a = [[80, 90], [85, 75]]  # 2 repetitions x 2 folds
    b = [[78, 86], [85, 71]]  # differences 2, 4, 0, 4: mean 2.5, s^2 = 11/3
    error = math.sqrt((1 / 4 + 0.5) * 11 / 3)  # (1/(R*K) + n2/n1) s^2
    difference, low, high, p = stats.cv_paired_difference(a, b, test_train_ratio=0.5)
    half = 3.182446305284263 * error  # t quantile at 0.975 with 3 degrees of freedom
    assert difference == 2.5 and (low, high) == pytest.approx((2.5 - half, 2.5 + half))
    angle = math.atan(2.5 / error / math.sqrt(3))  # t = 1.508; with 3 degrees of freedom the tail is closed-form:
    assert p == pytest.approx(1 - 2 / math.pi * (angle + math.sin(angle) * math.cos(angle)))  # p = 0.229


def test_without_the_correction_it_is_the_ordinary_one_sample_t_test():
    rng = np.random.default_rng(3)
    a, b = 80 + 5 * rng.standard_normal((3, 5)), 78 + 5 * rng.standard_normal((3, 5))
    difference, low, high, p = stats.cv_paired_difference(a, b, test_train_ratio=0)
    ordinary = scipy.stats.ttest_1samp((a - b).ravel(), 0)
    assert p == pytest.approx(ordinary.pvalue) and difference == pytest.approx((a - b).mean())
    assert (low, high) == pytest.approx(tuple(ordinary.confidence_interval(0.95)))


def test_a_cv_interval_holds_the_mean_and_widens_with_the_test_train_ratio():
    accuracies = [[70, 75, 80, 72, 78], [74, 71, 79, 76, 73]]
    mean, low, high = stats.cv_interval(accuracies, test_train_ratio=0)
    assert mean == pytest.approx(74.8) and low < mean < high
    widths = [high - low for _, low, high in (stats.cv_interval(accuracies, r) for r in (0, 0.25, 1))]
    assert widths[0] < widths[1] < widths[2]
    assert stats.cv_interval(np.ravel(accuracies), 0.25) == stats.cv_interval(accuracies, 0.25)  # flat or R x K


def test_folds_that_all_differ_alike_give_a_point_interval():
    same = [[80, 70, 90]]
    assert stats.cv_paired_difference(same, same, 0.5) == (0, 0, 0, 1.0)  # no difference at all
    difference, low, high, p = stats.cv_paired_difference([[82, 72, 92]], same, 0.5)  # 2 points on every fold
    assert (difference, low, high) == (2, 2, 2) and math.isnan(p)  # no spread: t undefined, never "supported"
    assert not stats.supported(low, high, p)
    assert stats.cv_interval(same[0][:1] * 4, 0.25) == (80, 80, 80)


@pytest.mark.parametrize("a, b, ratio", [([[80, 70]], [[80, 70, 60]], 0.25), ([[80, 70]], [80, 70, 60, 50], 0.25),
                                         ([80], [70], 0.25), ([80, 70], [70, 60], -0.1),
                                         ([80, 70], [70, 60], float("nan"))])
def test_misshapen_or_too_few_fold_values_are_refused(a, b, ratio):
    with pytest.raises(ValueError):
        stats.cv_paired_difference(a, b, ratio)


def test_null_comparisons_are_rejected_at_most_about_5_percent_of_the_time():
    # per-fold differences with no real difference, correlated as overlapping training sets make
    # them: a share 1/K of their variance common to all folds, the model the correction assumes
    rng = np.random.default_rng(0)
    data_sets, repetitions, folds = 400, 10, 5
    shared = rng.standard_normal((data_sets, 1, 1)) * math.sqrt(1 / folds)
    noise = rng.standard_normal((data_sets, repetitions, folds)) * math.sqrt(1 - 1 / folds)
    differences = shared + noise
    zeros = np.zeros((repetitions, folds))
    corrected = np.mean([stats.cv_paired_difference(d, zeros, 1 / (folds - 1))[3] < 0.05 for d in differences])
    uncorrected = np.mean(scipy.stats.ttest_1samp(differences.reshape(data_sets, -1), 0, axis=1).pvalue < 0.05)
    assert corrected <= 0.07
    assert uncorrected > 0.3  # the ordinary t-test, blind to the correlation: what the check exists to catch


def test_fold_accuracies_are_each_folds_mean_over_its_images():
    correct = [[1, 0, 1, 1, 0, 1], [1, 1, 1, 0, 0, 0]]
    fold_of = [[0, 0, 1, 1, 2, 2], [2, 1, 0, 0, 1, 2]]  # each repetition its own folds
    assert stats.fold_accuracies(correct, fold_of, 3).tolist() == [[50, 100, 50], [50, 50, 50]]
    with pytest.raises(ValueError):
        stats.fold_accuracies(correct, fold_of, 4)  # fold 3 tests no image
    with pytest.raises(ValueError):
        stats.fold_accuracies(correct, [[0, 0, 1, 1, 2]] * 2, 3)  # shapes differ
    with pytest.raises(ValueError):
        stats.fold_accuracies(correct, [[0, 0, 1, 1, 2, 3]] * 2, 3)  # no fold 3 of 3
