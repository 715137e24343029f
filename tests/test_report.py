"""common/report.py: a reused run's history is checked, and the summary ranks the tasks by test top-1."""
from dataclasses import dataclass

import pytest

from common import report, results
from common.cli import UserError
from common.results import HISTORY_FIELDS


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


@dataclass(frozen=True, eq=False)  # as reproduce.Task: hashed by identity
class Task:
    title: str
    report: dict = None


def test_the_summary_ranks_by_mean_test_top1_and_lists_unavailable_weights():
    def task(title, top1=None):
        return Task(title, {"test": {"top1": top1}} if top1 else None)

    def summary(top1):
        return {"stats": {"test": {"top1": top1, "top3": (90.0, 1.0), "loss": (0.5, 0.1)}},
                "config": {"parameters": {"trainable": 1234}}}

    low, high, missing = task("low"), task("high", 47.62), task("missing", 86.9)
    lines = report.summary_lines({low: summary((30.0, 2.0)), high: summary((60.0, 3.0))}, {missing: "offline"})
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split(" | ")[0] for row in rows] == ["| high", "| low", "| missing"]
    assert "60.00 ± 3.00 %" in rows[0] and "47.62 %" in rows[0] and "1,234" in rows[0]
    assert "weights unavailable" in rows[2] and "86.90 %" in rows[2]


def test_the_machine_line_says_how_many_processes_trained_each_run():
    one, two = ({"config": {"device": "cpu", "precision": "fp32", **config}}
                for config in ({"processes": 1}, {"processes": 2, "rank_devices": ["cuda:0", "cuda:1"]}))
    assert "device cpu, precision fp32, each run trained by 1 process, " in report.machine({Task("a"): one})
    assert "each run trained by 1 process, 2 processes on cuda:0, cuda:1, " in \
        report.machine({Task("a"): one, Task("b"): two})
