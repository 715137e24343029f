import numpy as np
import pytest
from sklearn.metrics import (balanced_accuracy_score, cohen_kappa_score, f1_score, precision_recall_fscore_support)

from common import scores


def grouped(labels, predicted, classes):
    """Each row of labels/predicted as its own group's confusion matrix."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    groups = np.repeat(np.arange(len(labels))[:, None], labels.shape[1], axis=1)
    return scores.confusion_counts(labels, predicted, classes, groups, len(labels))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_scores_match_scikit_learn_group_by_group():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(40, 30))
    predicted = np.where(rng.random((40, 30)) < 0.5, labels, rng.integers(0, 5, size=(40, 30)))
    predicted[3] = 2  # one class predicted for every image
    labels[4, :] = np.arange(30) % 3  # two classes never true
    counts = grouped(labels, predicted, 5)
    for g, (y, p) in enumerate(zip(labels, predicted)):
        assert counts[g].sum() == 30
        assert scores.balanced_accuracy(counts)[g] == pytest.approx(balanced_accuracy_score(y, p))
        assert scores.macro_f1(counts)[g] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
        assert scores.kappa(counts)[g] == pytest.approx(cohen_kappa_score(y, p))


def test_scores_by_hand_and_where_they_are_undefined():
    # 4 images, 2 classes: true 0 0 1 1, predicted 0 1 1 1: recalls 1/2 and 1; F1s 2/3 and 4/5
    counts = grouped([[0, 0, 1, 1]], [[0, 1, 1, 1]], 2)
    assert counts[0].tolist() == [[1, 1], [0, 2]]
    assert scores.balanced_accuracy(counts)[0] == pytest.approx(0.75)
    assert scores.macro_f1(counts)[0] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert scores.kappa(counts)[0] == pytest.approx((3 / 4 - (2 * 1 + 2 * 3) / 16) / (1 - 8 / 16))
    one_class = grouped([[1, 1, 1]], [[1, 1, 1]], 3)  # everything right, but no two classes to agree on
    assert scores.balanced_accuracy(one_class)[0] == 1 and scores.macro_f1(one_class)[0] == 1
    assert np.isnan(scores.kappa(one_class)[0])
    all_wrong = grouped([[0, 1]], [[1, 0]], 2)
    assert scores.balanced_accuracy(all_wrong)[0] == 0 and scores.kappa(all_wrong)[0] == pytest.approx(-1)
    empty = scores.confusion_counts(np.array([0]), np.array([0]), 2, np.array([0]), 2)[1:]  # group 1 has no image
    assert all(np.isnan(f(empty)[0]) for f in (scores.balanced_accuracy, scores.macro_f1, scores.kappa))


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy_per_bin():
    confidence = np.array([0.95, 0.95, 0.55, 0.55, 0.55, 0.55, 0.3])
    correct = np.array([1, 0, 1, 1, 1, 1, 0])
    # bins: (0.9, 1] 2 images, 50 % right at 0.95; (0.5, 0.6] 4 images, 100 % at 0.55; (0.2, 0.3] 1 at 0.3, 0 %
    by_hand = (2 * 0.45 + 4 * 0.45 + 1 * 0.3) / 7
    groups = np.zeros(7, dtype=int)
    assert scores.expected_calibration_error(confidence, correct, groups, 1)[0] == pytest.approx(by_hand)
    images, summed_confidence, summed_correct = scores.calibration_bins(confidence, correct, groups, 1)
    assert images[0].tolist() == [0, 0, 1, 0, 0, 4, 0, 0, 0, 2] and summed_correct[0, 9] == 1
    assert scores.expected_calibration_error(np.ones(3), np.ones(3), np.zeros(3, int), 1)[0] == 0  # sure and right
    assert np.isnan(scores.expected_calibration_error(np.ones(1), np.ones(1), np.zeros(1, int), 2)[1])  # no images


def test_per_class_precision_recall_f1_and_counts_match_scikit_learn():
    labels, predicted = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 1])
    precision, recall, f1, support = scores.per_class(labels, predicted, 4)
    assert support.tolist() == [2, 2, 1, 0]
    assert precision[:2].tolist() == pytest.approx([1, 0.5]) and np.isnan(precision[2])  # 2 never predicted
    assert recall[:3].tolist() == pytest.approx([0.5, 1, 0]) and np.isnan(recall[3])  # 3 never true
    expected = precision_recall_fscore_support(labels, predicted, labels=[0, 1], zero_division=0)
    assert f1[:2] == pytest.approx(expected[2])


def test_most_confused_pairs_are_the_largest_off_diagonal_cells():
    counts = np.array([[9, 3, 0], [1, 5, 3], [0, 4, 7]])
    assert scores.confused_pairs(counts, k=5) == [(2, 1, 4), (0, 1, 3), (1, 2, 3), (1, 0, 1)]
    assert scores.confused_pairs(np.eye(3, dtype=int)) == []  # nothing confused


def test_holm_by_hand():
    # sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (kept non-decreasing)
    assert scores.holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert scores.holm([0.5, 0.9]).tolist() == [1.0, 1.0]
    assert scores.holm([0.2]).tolist() == [0.2] and scores.holm([]).tolist() == []
