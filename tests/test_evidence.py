"""common/evidence.py under cross-validation: each repetition's folds pooled, every image once, and
intervals and comparisons by the corrected repeated k-fold t-test on the folds' accuracies."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common import results, stats
from common.evidence import read_evidence

CLASSES = ["a", "b"]


def fold_run(folder, right, first_image, train=40):
    """A finished fold's test predictions: image i (numbered from first_image) right where right[i]."""
    folder.mkdir(parents=True)
    labels = torch.tensor([i % 2 for i in range(len(right))])
    predicted = torch.where(torch.tensor(right, dtype=torch.bool), labels, 1 - labels)
    images = range(first_image, first_image + len(right))
    split = SimpleNamespace(paths=[f"test/{i}.png" for i in images], digests=[f"{i:040x}" for i in images], labels=labels)
    digest = results.write_predictions(folder / "test_predictions.csv", split,
                                       torch.log(torch.nn.functional.one_hot(predicted, 2).float() * 0.8 + 0.1), CLASSES)
    results.write_config(folder, {"classes": CLASSES, "split_sizes": {"train": train, "validation": 5, "test": len(right)},
                                  "test_predictions_sha256": digest})
    return folder


def cross_validated(folder, folds_right):
    """A repetition's fold runs, fold k's test images right where folds_right[k] says."""
    runs, first = [], 0
    for k, right in enumerate(folds_right):
        runs.append(fold_run(folder / f"fold{k}", right, first))
        first += len(right)
    return runs


FOLDS = [[1, 1, 1, 0, 0, 1, 1, 1, 1, 0], [1, 0, 1, 0, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 1, 1, 1, 1]]


def test_a_repetitions_folds_are_pooled_every_image_once_with_the_fold_that_tested_it(tmp_path):
    found = read_evidence(cross_validated(tmp_path, FOLDS), folds=3)
    assert found.labels.shape == (1, 30) and len(set(found.sha1s[0])) == 30
    assert found.fold_of.tolist() == [[0] * 10 + [1] * 10 + [2] * 10]
    assert found.fold_accuracies().tolist() == [[70.0, 80.0, 70.0]]
    assert found.test_train_ratio == pytest.approx(10 / 40)
    assert found.interval() == pytest.approx(stats.cv_interval([[70.0, 80.0, 70.0]], 0.25))
    assert found.correct().mean() == pytest.approx(22 / 30)  # the pooled accuracy: every image once


def test_models_are_compared_fold_by_fold_with_the_corrected_t_test(tmp_path):
    better = [[1] * 10, [1] * 9 + [0], [1] * 10]
    a = read_evidence(cross_validated(tmp_path / "a", better), folds=3)
    b = read_evidence(cross_validated(tmp_path / "b", FOLDS), folds=3)
    assert a.tested_like(b)
    difference, low, high, p = a.compare(b)
    assert (difference, low, high, p) == pytest.approx(stats.cv_paired_difference([[100, 90, 100]], [[70, 80, 70]], 0.25))
    assert difference == pytest.approx(70 / 3)


def test_other_folds_of_the_same_images_are_not_compared(tmp_path):
    a = read_evidence(cross_validated(tmp_path / "a", FOLDS), folds=3)
    b = read_evidence(cross_validated(tmp_path / "b", FOLDS), folds=3)
    b.fold_of = b.fold_of[:, ::-1].copy()  # the same images, tested by other folds' models
    assert not a.tested_like(b)
    single = read_evidence([fold_run(tmp_path / "seed0", [1] * 30, 0)])
    assert single.fold_of is None and not a.tested_like(single)


def test_repetitions_are_rows_and_a_missing_fold_is_an_error_not_a_short_row(tmp_path):
    runs = cross_validated(tmp_path / "rep0", FOLDS) + cross_validated(tmp_path / "rep1", FOLDS[::-1])
    found = read_evidence(runs, folds=3)
    assert found.labels.shape == (2, 30) and found.fold_accuracies().tolist() == [[70, 80, 70], [70, 80, 70]]
    with pytest.raises(ValueError, match="image counts"):
        read_evidence(runs[:-1], folds=3)  # the last repetition lacks a fold


def test_a_run_without_its_split_sizes_is_a_value_error(tmp_path):
    runs = cross_validated(tmp_path, FOLDS)
    results.write_config(runs[1], {"classes": CLASSES})  # no split sizes, and no digest to check against
    with pytest.raises(ValueError, match="split sizes"):
        read_evidence(runs, folds=3)


def test_per_class_accuracy_and_confusion_count_every_pooled_image_once(tmp_path):
    found = read_evidence(cross_validated(tmp_path, FOLDS), folds=3)
    confusion = found.confusion().numpy()
    assert confusion.sum() == 30 and np.trace(confusion) == 22
    assert found.per_class() == pytest.approx([100 * confusion[c, c] / confusion[c].sum() for c in range(2)])
