"""common/stats.py against known values: the exact McNemar test, exact binomial tails, and intervals
that behave as intervals must."""
import math

import numpy as np
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
