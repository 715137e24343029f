"""common/report_task.py: a reused run's history is checked, a model's section shows its per-class
scores with counts, its confusion counts and calibration, and the 2020 report's numbers name their
configuration where ours differs."""
import pytest
import torch
import torch.nn as nn

from common import report_task, results
from common.data import decode_images, decoded_cache
from common.evidence import Mistake
from common.gradcam import grad_cam
from common.cli import UserError
from common.report_task import TaskResult
from common.results import HISTORY_FIELDS
from test_report import ONE_SPLIT, full_stats
from conftest import make_split
from test_results import edit_predictions, small_run
from test_train import ImagesIn


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
    evidence, why, _ = report_task.task_evidence(tmp_path / "task", [run], "A model", ONE_SPLIT)
    assert evidence is None and "SHA-256" in why and not (tmp_path / "task" / "confusion.png").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "seed0/test_predictions.csv" in warnings[0]
    lines = report_task.task_lines(TaskResult("task", "A model", stats=full_stats(), no_evidence=why), ONE_SPLIT)
    assert any(line.startswith("No intervals, comparisons, per-class scores or mistakes: ") for line in lines)




def test_each_mistake_is_explained_by_its_own_runs_model_loaded_once(tmp_path, capsys):
    data = make_split(tmp_path / "data")
    images = sorted(str(p) for p in (data / "test").rglob("*.png"))[:3]
    models = {}
    for run in ("fold0", "fold1"):
        torch.manual_seed(len(models))
        models[tmp_path / run] = nn.Sequential(ImagesIn(), nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                               nn.Linear(2, 3), nn.LogSoftmax(dim=1))
    loaded = []

    def explain(run):
        loaded.append(run)
        return models[run]
    classes = ["blue", "green", "red"]
    sha1 = {path: digest for path, digest in zip(images, decode_images(images, decoded_cache())[2])}
    mistakes = [Mistake(images[0], "blue", "red", 0.9, 1, 1, sha1[images[0]]),
                Mistake(images[1], "blue", "green", 0.8, 1, 0, sha1[images[1]]),
                Mistake(str(tmp_path / "gone.png"), "red", "blue", 0.7, 1, 0, "0" * 40),
                Mistake(images[2], "blue", "red", 0.6, 1, 1, sha1[images[2]]),
                Mistake(images[2], "blue", "red", 0.5, 1, 0, "f" * 40)]  # another image once lay at its path
    runs = [tmp_path / "fold0", tmp_path / "fold1"]
    explained = report_task.explained_mistakes(mistakes, runs, classes, explain)
    assert loaded == [runs[1], runs[0]]  # each model loaded once, for all of its mistakes
    assert explained[2] == "image not found" and explained[4] == "image changed since the run"
    assert "1 test images changed since their runs tested them" in capsys.readouterr().err
    for mistake, (crop, heat) in zip(mistakes[:2] + mistakes[3:4], explained[:2] + explained[3:4]):
        crops, _, _ = decode_images([mistake.path], decoded_cache())
        assert torch.equal(crop, crops[0])
        expected = grad_cam(models[runs[mistake.run]], crops[0:1], torch.tensor([classes.index(mistake.predicted)]))
        assert torch.equal(heat, expected[0])

    def unloadable(run):
        raise UserError("the backbone weights moved")
    drawn_plain = [None, None, "image not found", None, "image changed since the run"]
    assert report_task.explained_mistakes(mistakes, runs, classes, unloadable) == drawn_plain
    assert "no Grad-CAM of its mistakes (the backbone weights moved)" in capsys.readouterr().err
