"""common/report.py: the summary ranks the models by test top-1 beside the baseline, scores and
comparisons come with intervals and Holm's p, flags say what a model did not learn, and every table
keeps its cells whatever the names."""
import shutil

import pytest

from common import report, results
from common.files import read_json
from common.report_task import TaskResult, task_evidence
from test_evidence import cross_validated, training_folder
from test_results import HOSTILE_CLASSES, hand_made_run, table_cells


def trained(title, top1, course_top1=None):
    return TaskResult(title, title, {"test": {"top1": course_top1}} if course_top1 else None,
                             stats={"test": {"top1": top1, "top3": (90.0, 1.0), "loss": (0.5, 0.1)}},
                             config={"parameters": {"trainable": 1234}})


ONE_SPLIT = report.Reproduction([], "demo", (0.7, 0.2, 0.1), {}, seeds=1, resplit=False)


def test_the_summary_ranks_by_mean_test_top1_and_lists_unavailable_weights():
    missing = TaskResult("missing", "missing", {"test": {"top1": 86.9}}, missing="offline")
    lines = report.summary_lines([trained("low", (30.0, 2.0)), missing, trained("high", (60.0, 3.0), 47.62)],
                                 ONE_SPLIT)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split(" | ")[0] for row in rows] == ["| high", "| low", "| missing"]
    assert "60.00 ± 3.00 %" in rows[0] and "47.62 %" in rows[0] and "1,234" in rows[0]
    assert "weights unavailable" in rows[2] and "86.90 %" in rows[2]


def test_the_machine_line_says_how_many_processes_trained_each_run():
    one, two = (TaskResult("a", "a", config={"device": "cpu", "precision": "fp32", **config})
                for config in ({"processes": 1}, {"processes": 2, "rank_devices": ["cuda:0", "cuda:1"]}))
    assert "device cpu, precision fp32, each run trained by 1 process, " in report.machine([one])
    assert "each run trained by 1 process, 2 processes on cuda:0, cuda:1, " in report.machine([one, two])


def test_the_epochs_line_names_each_tasks_own_epochs_or_the_quick_look():
    how = report.Reproduction(["--seeds", "1"], "demo", (0.7, 0.2, 0.1), {}, seeds=1, resplit=False)
    assert report.epochs_line(how, {"task1_a": 20, "task2_b": 100, "task1_c": 20}) == \
        "the 2020 report’s (20 for task1_a, task1_c; 100 for task2_b)"
    assert report.epochs_line(report.Reproduction([], "demo", (), {}, 1, False, epochs=2), {"task1_a": 20}) == \
        "all tasks 2 (overridden for a quick look)"


def full_stats():
    return {split: {"loss": 0.5, "top1": 75.0, "top3": 100.0} for split in ("train", "validation", "test")}


def test_report_tables_keep_their_cells_and_hold_no_html_whatever_the_names(tmp_path):
    out = tmp_path / "out"
    hand_made_run(out / "task_a" / "seed0", HOSTILE_CLASSES, [0, 1, 2, 3, 4],
                  [[0.6 if j == (i + 1) % 5 else 0.1 for j in range(5)] for i in range(5)])
    titles = ["<script>alert(1)</script>", "a|b *x* $\\undefined$"]
    evidence, _, _ = task_evidence(out / "task_a", [out / "task_a" / "seed0"], titles[0], ONE_SPLIT)  # its figures
    trained = [TaskResult(f"task_{c}", title, stats=full_stats(), evidence=evidence,
                                 config={"parameters": {"trainable": 10}, "device": "cpu"})
               for c, title in zip("ab", titles)]
    how = report.Reproduction(["--data", "a`b"], "<i>x</i>", (0.7, 0.2, 0.1),
                              {"train": 1, "validation": 1, "test": 5}, seeds=1, resplit=False)
    report.write_report(out, how, trained, {"task_a": 1, "task_b": 1})
    text = (out / "REPORT.md").read_text()
    assert "<script>" not in text and "<i>" not in text and "\\<script\\>" in text
    assert "| \\$\\\\undefined\\$ | a\\$b\\$c | a\\|b | \\<script\\> | \\*x\\* |" in text
    assert "``python reproduce.py --data a`b``" in text
    tables = table_cells(text)
    # the summary, the scores, the comparison, and each task's metrics, per-class scores and confusion
    # matrix: every row as its header
    assert len(tables) == 9 and all(len(set(rows)) == 1 for rows in tables)
    for name in ("summary.png", "task_a/confusion.png", "task_a/top_losses.png"):
        assert (out / name).stat().st_size > 1000


def cross_validated_task(out, name, folds_right, counts=(30, 10)):
    """A task's 3 fold runs (test_evidence.cross_validated) whose training folders hold `counts` images per class."""
    runs = cross_validated(out / name / "rep0", folds_right)
    for k, run in enumerate(runs):
        split = training_folder(out / "splits" / f"fold{k}", counts) if not (out / "splits" / f"fold{k}").exists() \
            else out / "splits" / f"fold{k}"
        results.write_config(run, {**read_json(run / "config.json"), "data": str(split), "parameters": {"trainable": 5}})
    return runs


CROSS_VALIDATED = report.Reproduction([], "demo", (), {"train": 40, "validation": 5, "test": 10}, seeds=1,
                                      resplit=False, folds=3)


def test_a_model_answering_one_class_is_flagged_beside_the_baseline_and_holm_adjusts_every_pair(tmp_path):
    out, how = tmp_path / "out", CROSS_VALIDATED
    good = [[1] * 10, [1] * 9 + [0], [1] * 10]
    lazy = [[1, 0] * 5] * 3  # labels alternate a, b: right exactly where the truth is a, so always "a"
    found = {name: task_evidence(out / name, runs, name, how)[0] for name, runs in
             (("good", cross_validated_task(out, "good", good)), ("lazy", cross_validated_task(out, "lazy", lazy)))}
    task_results = [TaskResult(name, f"{name} model", config={"parameters": {"trainable": 5}}, evidence=found[name],
                               stats={split: {"top1": top1, "top3": 100.0, "loss": 0.5} for split in
                                      ("train", "validation", "test")},
                               runs=[out / name / "rep0" / f"fold{k}" for k in range(3)])
                    for name, top1 in (("good", 96.67), ("lazy", 50.0))]
    task_results[1].course_report = {split: {"top1": 29.24, "top3": 40.48, "loss": 1.9} for split in
                                     ("train", "validation", "test")}
    task_results[1].course_setting = "--clusters 4"
    report.write_report(out, how, task_results, {"good": 1, "lazy": 1})
    text = (out / "REPORT.md").read_text()
    assert "| Always the largest training class (a) | 50.00 ± 0.00 % [50.0, 50.0] |" in text
    assert "- **Warning, lazy model:** It predicts *a* for 100 % of test images, the true class of 50 % of them." in text
    assert "It is not shown better than always answering the largest class: +0.0 points [0.0, 0.0], Holm p = 1." in text
    assert "Warning, good model" not in text
    comparisons = [line for line in text.splitlines() if line.endswith(("| supported |", "| inconclusive |"))]
    assert len(comparisons) == 3 and "Holm p adjusts p for the 3 comparisons" in text  # good, lazy, the baseline
    assert "The 2020 report's lazy model (`--clusters 4`, a configuration no row here has): 29.24 % test top-1." in text
    assert "29.24 %" not in next(line for line in text.splitlines() if line.startswith("| lazy model | 50.00"))
    assert "| a | 15 | 15 | 50.0 % | 100.0 % | 66.7 % |" in text  # lazy's per-class row: every a found
    assert "| b | 15 | 15 | n/a | 0.0 % | 0.0 % |" in text  # b never predicted: no precision
    assert (out / "lazy" / "reliability.png").stat().st_size > 1000 and (out / "lazy" / "confusion.csv").exists()


def test_the_baseline_is_left_out_in_one_line_where_the_training_folders_are_gone(tmp_path, capsys):
    out = tmp_path / "out"
    runs = cross_validated_task(out, "good", [[1] * 10] * 3)
    found, _, _ = task_evidence(out / "good", runs, "good", CROSS_VALIDATED)
    shutil.rmtree(out / "splits")
    assert report.baseline_result([TaskResult("good", "good", evidence=found, runs=runs)], CROSS_VALIDATED) is None
    assert capsys.readouterr().out.startswith("no majority-class baseline: the training images of ")


@pytest.mark.parametrize("labels, probabilities", [
    ([0], [[0.9, 0.1]]),  # 1 test image
    ([1, 1, 1], [[0.2, 0.8]] * 3),  # one class only, every prediction right
    ([0, 1], [[0.1, 0.9], [0.9, 0.1]]),  # every prediction wrong
])
def test_degenerate_test_sets_give_numbers_or_na_not_a_traceback(tmp_path, labels, probabilities):
    out = tmp_path / "out"
    runs = [hand_made_run(out / "task" / f"seed{s}", ["a", "b"], labels, probabilities) for s in range(2)]
    how = report.Reproduction([], "demo", (0.7, 0.2, 0.1), {"train": 1, "validation": 1, "test": len(labels)},
                              seeds=2, resplit=False)
    evidence, why, _ = task_evidence(out / "task", runs, "A model", how)
    assert why is None
    report.write_report(out, how, [TaskResult("task", "A model", stats=full_stats(), evidence=evidence, runs=runs,
                                              config={"parameters": {"trainable": 1}})], {"task": 1})
    text = (out / "REPORT.md").read_text()
    scores = text[text.index("| model | balanced accuracy"):].splitlines()
    kappa = next(line for line in scores if line.startswith("| A model | ")).split(" | ")[3]
    assert kappa == "n/a" if len(set(labels)) == 1 else kappa.startswith("-1.00")


def test_seeds_on_their_own_splits_are_said_to_be_compared_by_the_corrected_resampled_t_test():
    resplit = report.Reproduction([], "demo", (0.7, 0.2, 0.1), {}, seeds=3, resplit=True)
    assert "corrected resampled t-test" in report.interval_kind(resplit)
    assert "no image is paired across seeds" in report.comparison_method(resplit, 3)
    assert "bootstrap" in report.interval_kind(ONE_SPLIT) and "conditional on these trained runs" in \
        report.comparison_method(ONE_SPLIT, 3)
