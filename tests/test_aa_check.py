"""studies/aa_check.py: which comparisons it counts as false positives, its table and its refusals of
bad input, on made-up correctness and fold accuracies (its real runs take many minutes)."""
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO, exit_code_and_output

spec = importlib.util.spec_from_file_location("studies_aa_check", REPO / "studies" / "aa_check.py")
aa_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aa_check)


def test_single_split_calls_only_seeds_that_really_differ_different():
    rng = np.random.default_rng(0)
    same = (rng.random(60) < 0.7).astype(float)
    better = same.copy()
    better[same == 0] = 1  # right on every image the others get wrong: about 18 more of 60
    calls = aa_check.single_split_calls(np.array([same, same, better]))
    assert calls == {(0, 1): False, (0, 2): True, (1, 2): True}


def test_cv_calls_compare_every_pair_of_seeds_within_each_fold_draw():
    rng = np.random.default_rng(1)
    noise = 80 + rng.normal(0, 2, (2, 3, 5))  # 2 fold draws x 3 seeds x 5 folds
    noise[1, 2] = noise[1, 0] + 10 + rng.normal(0, 1, 5)  # draw 1's seed 2: 10 points better on every fold
    calls = aa_check.cv_calls(noise, ratios=[0.25, 0.25])
    assert sorted(calls) == [(d, i, j) for d in (0, 1) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert calls[1, 0, 2] and calls[1, 1, 2] and not any(calls[0, i, j] for i, j in ((0, 1), (0, 2), (1, 2)))


def test_the_table_counts_disjoint_pairs_and_gives_an_interval_only_to_independent_ones():
    rng = np.random.default_rng(2)
    correct = (rng.random((6, 40)) < 0.7).astype(float)
    single = {pair: pair == (2, 3) for pair in aa_check.single_split_calls(correct)}  # one disjoint pair called
    cv = {(d, 0, 1): d == 0 for d in range(4)}
    args = SimpleNamespace(epochs=None, seeds=6, fold_seeds=2)
    lines = aa_check.report(args, correct, single, cv).splitlines()
    assert "| single split, every pair of 6 seeds | 15 | 1 | 6.7 % |" in lines
    disjoint = next(line for line in lines if line.startswith("| single split, disjoint"))
    assert disjoint.startswith("| single split, disjoint pairs (0, 1), (2, 3), ... | 3 | 1 | 33.3 % [0.8, 90.6] |")
    assert "| 5-fold CV, seeds 0 and 1 of each fold draw | 4 | 1 | 25.0 % [0.6, 80.6] |" in lines
    assert not any("every pair of 2 seeds per fold draw" in line for line in lines)


@pytest.mark.parametrize("argv, message", [(["--seeds", "1"], "--seeds 1: give 2 to 1000"),
                                           (["--comparisons", "-1"], "--comparisons -1: give 0 to 1000"),
                                           (["--fold-seeds", "1"], "--fold-seeds 1: give 2 to 100"),
                                           (["--epochs", "0"], "--epochs 0: need at least 1")])
def test_out_of_range_options_are_one_line_each(argv, message, tmp_path, capsys):
    code, out, err = exit_code_and_output(lambda: aa_check.main([*argv, "--out", str(tmp_path / "out")]), capsys)
    assert code != 0 and err == f"error: {message}\n" and not (tmp_path / "out").exists()
