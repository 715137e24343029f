"""common/report.py: a reused run's history is checked, and the summary ranks the tasks by test top-1."""
import pytest

from common import report, results
from common.cli import UserError
from common.results import HISTORY_FIELDS
from test_results import HOSTILE_CLASSES, edit_predictions, hand_made_run, small_run, table_cells


def history(epochs):
    return [{field: float(epoch if field == "epoch" else 0.5) for field in HISTORY_FIELDS}
            for epoch in range(1, epochs + 1)]


def test_a_history_of_other_length_or_with_text_is_one_error(tmp_path):
    results.write_history(tmp_path, history(2))
    assert len(report.run_history(tmp_path, 2)) == 2
    with pytest.raises(UserError, match="history.csv is missing or damaged"):
        report.run_history(tmp_path, 3)  # a run shorter than the report says
    (tmp_path / "history.csv").write_text("epoch,lr\n1,banana\n")
    with pytest.raises(UserError, match="history.csv is missing or damaged"):
        report.run_history(tmp_path, 1)


def trained(title, top1, course_top1=None):
    return report.TaskResult(title, title, {"test": {"top1": course_top1}} if course_top1 else None,
                             stats={"test": {"top1": top1, "top3": (90.0, 1.0), "loss": (0.5, 0.1)}},
                             config={"parameters": {"trainable": 1234}})


ONE_SPLIT = report.Reproduction([], "demo", (0.7, 0.2, 0.1), {}, seeds=1, resplit=False)


def test_the_summary_ranks_by_mean_test_top1_and_lists_unavailable_weights():
    missing = report.TaskResult("missing", "missing", {"test": {"top1": 86.9}}, missing="offline")
    lines = report.summary_lines([trained("low", (30.0, 2.0)), missing, trained("high", (60.0, 3.0), 47.62)],
                                 ONE_SPLIT)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split(" | ")[0] for row in rows] == ["| high", "| low", "| missing"]
    assert "60.00 ± 3.00 %" in rows[0] and "47.62 %" in rows[0] and "1,234" in rows[0]
    assert "weights unavailable" in rows[2] and "86.90 %" in rows[2]


def test_the_machine_line_says_how_many_processes_trained_each_run():
    one, two = (report.TaskResult("a", "a", config={"device": "cpu", "precision": "fp32", **config})
                for config in ({"processes": 1}, {"processes": 2, "rank_devices": ["cuda:0", "cuda:1"]}))
    assert "device cpu, precision fp32, each run trained by 1 process, " in report.machine([one])
    assert "each run trained by 1 process, 2 processes on cuda:0, cuda:1, " in report.machine([one, two])


def test_the_epochs_line_names_each_tasks_own_epochs_or_the_quick_look():
    how = report.Reproduction(["--seeds", "1"], "demo", (0.7, 0.2, 0.1), {}, seeds=1, resplit=False)
    assert report.epochs_line(how, {"task1_a": 20, "task2_b": 100, "task1_c": 20}) == \
        "the 2020 report’s (20 for task1_a, task1_c; 100 for task2_b)"
    assert report.epochs_line(report.Reproduction([], "demo", (), {}, 1, False, epochs=2), {"task1_a": 20}) == \
        "all tasks 2 (overridden for a quick look)"


def test_predictions_edited_since_the_run_leave_the_task_out_with_one_warning(tmp_path, capsys):
    run = small_run(tmp_path / "task" / "seed0")
    edit_predictions(run, lambda rows: rows[1].__setitem__(2, "c"))  # one true class changed
    evidence, why = report.task_evidence(tmp_path / "task", [run], "A model", ONE_SPLIT)
    assert evidence is None and "SHA-256" in why and not (tmp_path / "task" / "confusion.png").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "seed0/test_predictions.csv" in warnings[0]
    lines = report.task_lines(report.TaskResult("task", "A model", stats=full_stats(), no_evidence=why), ONE_SPLIT)
    assert any(line.startswith("No intervals, comparisons, per-class accuracy or mistakes: ") for line in lines)


def full_stats():
    return {split: {"loss": 0.5, "top1": 75.0, "top3": 100.0} for split in ("train", "validation", "test")}


def test_report_tables_keep_their_cells_and_hold_no_html_whatever_the_names(tmp_path):
    out = tmp_path / "out"
    hand_made_run(out / "task_a" / "seed0", HOSTILE_CLASSES, [0, 1, 2, 3, 4],
                  [[0.6 if j == (i + 1) % 5 else 0.1 for j in range(5)] for i in range(5)])
    titles = ["<script>alert(1)</script>", "a|b *x* $\\undefined$"]
    evidence, _ = report.task_evidence(out / "task_a", [out / "task_a" / "seed0"], titles[0], ONE_SPLIT)  # its figures
    trained = [report.TaskResult(f"task_{c}", title, stats=full_stats(), evidence=evidence,
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
    # the summary, the comparison, and each task's metrics and per-class accuracy: every row as its header
    assert len(tables) == 6 and all(len(set(rows)) == 1 for rows in tables)
    for name in ("summary.png", "task_a/confusion.png", "task_a/top_losses.png"):
        assert (out / name).stat().st_size > 1000
