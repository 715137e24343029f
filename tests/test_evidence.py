"""common/evidence.py: under cross-validation each repetition's folds pooled, every image once, and
intervals and comparisons by the corrected repeated k-fold t-test on the folds' accuracies and scores;
on one split the bootstrap; seeds on their own splits never paired image by image; the baseline."""
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score

from common import results, stats
from common.evidence import SCORES, majority_baseline, read_evidence
from common.files import read_json

CLASSES = ["a", "b"]


def fold_run(folder, right, first_image, train=40):
    """A finished fold's test predictions: image i (numbered from first_image) right where right[i]."""
    folder.mkdir(parents=True)
    labels = torch.tensor([i % 2 for i in range(len(right))], dtype=torch.long)
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


def test_per_class_scores_and_confusion_count_every_pooled_image_once(tmp_path):
    found = read_evidence(cross_validated(tmp_path, FOLDS), folds=3)
    confusion = found.confusion().numpy()
    assert confusion.sum() == 30 and np.trace(confusion) == 22
    images, counted, precision, recall, f1 = zip(*found.per_class())
    assert images == counted == (15, 15)  # one repetition: every image counted once
    assert recall == pytest.approx([100 * confusion[c, c] / confusion[c].sum() for c in range(2)])
    assert precision == pytest.approx([100 * confusion[c, c] / confusion[:, c].sum() for c in range(2)])
    assert f1 == pytest.approx([2 * p * r / (p + r) for p, r in zip(precision, recall)])


def test_cross_validated_scores_are_the_folds_scores_with_their_corrected_interval(tmp_path):
    found = read_evidence(cross_validated(tmp_path, FOLDS), folds=3)
    predicted = found.probabilities.argmax(axis=2)[0]
    folds = [found.fold_of[0] == k for k in range(3)]
    kappas = [cohen_kappa_score(found.labels[0][f], predicted[f]) for f in folds]
    value, low, high = stats.cv_interval(kappas, 0.25)
    assert found.score("Cohen's kappa") == pytest.approx((value, max(low, -1), min(high, 1)))  # cut to kappa's range
    balanced = [100 * balanced_accuracy_score(found.labels[0][f], predicted[f]) for f in folds]
    assert found.score("balanced accuracy") == pytest.approx(stats.cv_interval(balanced, 0.25))
    # every top-1 confidence is 0.9, all in one bin: a fold's ECE is |its accuracy - 0.9|
    confidence = found.probabilities.max(axis=2)[0]
    eces = [100 * abs(found.correct()[0][f].mean() - confidence[f].mean()) for f in folds]
    assert found.score("ECE")[0] == pytest.approx(np.mean(eces))


def test_one_split_scores_are_the_seeds_mean_with_a_bootstrap_interval_and_never_crash(tmp_path):
    runs = [fold_run(tmp_path / f"seed{s}", right, 0) for s, right in enumerate(FOLDS)]  # the same 10 images
    found = read_evidence(runs)
    assert found.fold_of is None
    predicted = found.probabilities.argmax(axis=2)
    value, low, high = found.score("macro-F1")
    assert value == pytest.approx(np.mean([100 * f1_score(found.labels[s], predicted[s], average="macro")
                                           for s in range(3)]))
    assert low <= value <= high and (value, low, high) == found.score("macro-F1")  # computed once, kept
    for right in ([1], [0], [1, 1, 1], [0, 0, 0, 0]):  # 1 image; all right; all wrong
        one = read_evidence([fold_run(tmp_path / f"edge{len(right)}{right[0]}", right, 0)])
        for name in SCORES:
            value, low, high = one.score(name)  # a number or NaN (n/a), never an exception
            assert np.isnan(value) or (np.isnan(low) or low <= value + 1e-9 <= high + 2e-9)
    assert np.isnan(read_evidence([fold_run(tmp_path / "single", [1], 0)]).score("Cohen's kappa")[0])  # one class


def test_seeds_on_their_own_splits_are_never_paired_image_by_image(tmp_path):
    """--resplit: each seed tested other images, so the seeds are repetitions of one fold each and the
    corrected resampled t-test compares their accuracies, not a bootstrap over image i of every seed."""
    runs = [fold_run(tmp_path / f"seed{s}", right, 100 * s) for s, right in enumerate(FOLDS)]
    found = read_evidence(runs)
    assert found.fold_of.tolist() == [[0] * 10] * 3 and found.test_train_ratio == pytest.approx(0.25)
    assert found.interval() == pytest.approx(stats.cv_interval([70, 80, 70], 0.25))
    other = read_evidence([fold_run(tmp_path / f"b{s}", [1] * 10, 100 * s) for s in range(3)])
    assert found.tested_like(other)
    assert found.compare(other) == pytest.approx(stats.cv_paired_difference([70, 80, 70], [100, 100, 100], 0.25))


def training_folder(folder, counts):
    """A split folder whose train/ holds counts[c] images of class c."""
    for name, n in zip(CLASSES, counts):
        (folder / "train" / name).mkdir(parents=True)
        for i in range(n):
            (folder / "train" / name / f"{i}.png").write_bytes(b"")
    return folder


def test_the_baseline_answers_each_runs_largest_training_class_with_its_frequencies(tmp_path):
    runs = cross_validated(tmp_path, FOLDS)
    for k, counts in enumerate([(30, 10), (10, 30), (20, 20)]):  # fold 2: a tie, the first class answers
        config = read_json(runs[k] / "config.json")
        results.write_config(runs[k], {**config, "data": str(training_folder(tmp_path / f"split{k}", counts))})
    found = read_evidence(runs, folds=3)
    baseline = majority_baseline(found, runs)
    assert baseline.probabilities[0, 0].tolist() == [0.75, 0.25] and baseline.probabilities[0, 10].tolist() == [0.25, 0.75]
    predicted = baseline.probabilities.argmax(axis=2)[0]
    assert predicted.tolist() == [0] * 10 + [1] * 10 + [0] * 10
    labels = found.labels[0]
    expected = [100 * (labels[10 * k:10 * k + 10] == answer).mean() for k, answer in enumerate([0, 1, 0])]
    assert baseline.fold_accuracies().ravel().tolist() == pytest.approx(expected)
    losses = [row["test"]["loss"] for row in baseline.run_metrics()]
    assert losses[0] == pytest.approx(-np.mean(np.log(np.where(labels[:10] == 0, 0.75, 0.25))))
    assert baseline.score("Cohen's kappa")[0] == 0  # always one answer: chance agreement exactly
    shutil.rmtree(tmp_path / "split1")
    with pytest.raises(ValueError, match="training images of .* are gone"):
        majority_baseline(found, runs)


def test_intervals_stay_inside_what_they_measure_and_a_fold_without_kappa_is_left_out(tmp_path):
    few = read_evidence(cross_validated(tmp_path / "a", [[1, 1, 1, 1], [1, 0, 0, 0]]), folds=2)  # 2 folds: t wide
    assert 0 <= few.interval()[1] and few.interval()[2] <= 100
    other = read_evidence(cross_validated(tmp_path / "b", [[0, 0, 0, 0], [1, 1, 1, 1]]), folds=2)
    difference, low, high, _ = few.compare(other)
    assert -100 <= low <= difference <= high <= 100
    found = read_evidence(cross_validated(tmp_path / "c", FOLDS), folds=3)
    found.labels[0, :10], found.probabilities[0, :10] = 0, [0.9, 0.1]  # fold 0: one class, every answer right
    kappas = [cohen_kappa_score(found.labels[0][k * 10:k * 10 + 10], found.probabilities[0, k * 10:k * 10 + 10].argmax(1))
              for k in (1, 2)]
    value, low, high = stats.cv_interval(kappas, 0.25)
    assert found.score("Cohen's kappa") == pytest.approx((value, max(low, -1), min(high, 1)))  # cut to kappa's range


def test_no_test_image_and_a_class_without_training_images_are_value_errors(tmp_path):
    empty = fold_run(tmp_path / "empty", [], 0)
    with pytest.raises(ValueError, match="no test image"):
        read_evidence([empty])
    runs = cross_validated(tmp_path / "rep0", FOLDS)
    for k, run in enumerate(runs):
        counts = (30, 0) if k == 2 else (30, 10)  # fold 2's training folder lost class b since
        results.write_config(run, {**read_json(run / "config.json"), "data": str(training_folder(tmp_path / f"s{k}", counts))})
    with pytest.raises(ValueError, match="holds no image of class 'b' now"):
        majority_baseline(read_evidence(runs, folds=3), runs)


def test_each_mistake_names_a_run_that_made_it_and_how_many_repetitions_did(tmp_path):
    runs = cross_validated(tmp_path / "rep0", FOLDS) + cross_validated(tmp_path / "rep1", FOLDS[::-1])
    wrong = {}  # image path -> the runs that predicted it wrong
    for r, run in enumerate(runs):
        paths, _, labels, probabilities, _ = results.read_predictions(run)
        for path, label, p in zip(paths, labels, probabilities):
            if p.argmax() != label:
                wrong.setdefault(path, set()).add(r)
    mistakes = read_evidence(runs, folds=3).top_losses(k=100)
    assert sorted(m.path for m in mistakes) == sorted(wrong)
    for m in mistakes:
        assert m.run in wrong[m.path] and m.seeds == len(wrong[m.path])  # a run per repetition tests each image
        assert (m.true, m.probability) == (CLASSES[int(m.path[5:-4]) % 2], pytest.approx(0.9))
        assert m.sha1 == f"{int(m.path[5:-4]):040x}"  # the image it tested, to check the file against
