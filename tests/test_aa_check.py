"""studies/aa_check.py: which comparisons it counts as false positives, its table and its refusals of
bad input, on made-up correctness and fold accuracies (its real runs take many minutes)."""
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import COLORS, REPO, exit_code_and_output, make_image, make_split

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
    better = np.ones(40)
    better[:12] = 0  # 70 %
    correct = np.array([better] * 6)
    correct[3] = 0  # seed 3 gets nothing right: called different from every other seed, and once in (2, 3)
    cv = np.full((4, 2, 5), 80.0)
    cv[0, 1] += [10, 11, 12, 10, 11]  # fold draw 0's seed 1 is better on every fold
    cv[1:, 1] += np.random.default_rng(3).normal(0, 2, (3, 5))
    lines = aa_check.report(20, correct, (cv, [0.25] * 4)).splitlines()
    assert lines[0] == "A/A check: task1_efficientnet, 20 epochs, a test at the 5 % level"
    assert "| single split, every pair of 6 seeds | 15 | 5 | 33.3 % |" in lines
    assert "| single split, disjoint pairs (0, 1), (2, 3), ... | 3 | 1 | 33.3 % [0.8, 90.6] |" in lines
    assert "| 5-fold CV, seeds 0 and 1 of each fold draw | 4 | 1 | 25.0 % [0.6, 80.6] |" in lines
    assert not any("every pair of 2 seeds per fold draw" in line for line in lines)
    assert len(aa_check.report(20, correct).splitlines()) == len(lines) - 2  # without folds: no CV line or row


@pytest.mark.parametrize("argv, message", [(["--seeds", "1"], "--seeds 1: give 2 to 1000"),
                                           (["--comparisons", "-1"], "--comparisons -1: give 0 to 1000"),
                                           (["--fold-seeds", "1"], "--fold-seeds 1: give 2 to 100"),
                                           (["--epochs", "0"], "--epochs 0: need at least 1")])
def test_out_of_range_options_are_one_line_each(argv, message, tmp_path, capsys):
    code, out, err = exit_code_and_output(lambda: aa_check.main([*argv, "--out", str(tmp_path / "out")]), capsys)
    assert code != 0 and err == f"error: {message}\n" and not (tmp_path / "out").exists()


def test_an_out_folder_holding_what_the_check_did_not_write_is_refused(tmp_path, capsys):
    (tmp_path / "single" / "notes.txt").parent.mkdir()
    (tmp_path / "single" / "notes.txt").write_text("mine")
    code, out, err = exit_code_and_output(lambda: aa_check.main(["--out", str(tmp_path)]), capsys)
    assert code != 0 and err.startswith(f"error: --out {tmp_path} holds single/notes.txt, which the A/A check did not")
    (tmp_path / "single" / "notes.txt").unlink()
    (tmp_path / "aa_check.md").write_text("my own notes\n")
    code, out, err = exit_code_and_output(lambda: aa_check.main(["--out", str(tmp_path)]), capsys)
    assert code != 0 and "holds aa_check.md" in err


@pytest.mark.slow
def test_a_tiny_check_runs_both_halves_and_reuses_its_runs_when_run_again(tmp_path, capsys):
    data = make_split(tmp_path / "data", counts=(4, 1, 1))
    for name, color in COLORS.items():  # 5 images a class: one of each in every fold's test
        for i in range(5):
            make_image(tmp_path / "images" / name / f"{i}.png", color, seed=100 + i)
    argv = ["--seeds", "2", "--comparisons", "1", "--epochs", "1", "--no-pretrained", "--data", str(data),
            "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out")]
    aa_check.main(argv)
    table = (tmp_path / "out" / "aa_check.md").read_text()
    assert "| single split, every pair of 2 seeds | 1 |" in table and "| 5-fold CV, seeds 0 and 1 of each fold draw | 1 |" in table
    runs = sorted((tmp_path / "out").glob("**/metrics.json"))
    assert len(runs) == 2 + 5 * 2
    made = [run.stat().st_mtime_ns for run in runs]
    aa_check.main(argv)
    assert [run.stat().st_mtime_ns for run in runs] == made and (tmp_path / "out" / "aa_check.md").read_text() == table
