"""common/report_task.py: a reused run's history is checked, a model's section shows its per-class
scores with counts, its confusion counts and calibration, and the 2020 report's numbers name their
configuration where ours differs."""
import pytest

from common import report_task, results
from common.cli import UserError
from common.report_task import TaskResult
from common.results import HISTORY_FIELDS
from test_report import ONE_SPLIT, full_stats
from test_results import edit_predictions, small_run


def history(epochs):
    return [{field: float(epoch if field == "epoch" else 0.5) for field in HISTORY_FIELDS}
            for epoch in range(1, epochs + 1)]


def test_a_history_of_other_length_or_with_text_is_one_error(tmp_path):
    results.write_history(tmp_path, history(2))
    assert len(report_task.run_history(tmp_path, 2)) == 2
    with pytest.raises(UserError, match="history.csv is missing or damaged"):
        report_task.run_history(tmp_path, 3)  # a run shorter than the report says
    (tmp_path / "history.csv").write_text("epoch,lr\n1,banana\n")
    with pytest.raises(UserError, match="history.csv is missing or damaged"):
        report_task.run_history(tmp_path, 1)


def test_predictions_edited_since_the_run_leave_the_task_out_with_one_warning(tmp_path, capsys):
    run = small_run(tmp_path / "task" / "seed0")
    edit_predictions(run, lambda rows: rows[1].__setitem__(2, "c"))  # one true class changed
    evidence, why = report_task.task_evidence(tmp_path / "task", [run], "A model", ONE_SPLIT)
    assert evidence is None and "SHA-256" in why and not (tmp_path / "task" / "confusion.png").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "seed0/test_predictions.csv" in warnings[0]
    lines = report_task.task_lines(TaskResult("task", "A model", stats=full_stats(), no_evidence=why), ONE_SPLIT)
    assert any(line.startswith("No intervals, comparisons, per-class scores or mistakes: ") for line in lines)


