"""common/ensemble.py: which fold runs a repetition's folder stands for, refusing an incomplete set."""
import json

import pytest

from common.ensemble import fold_runs, folds_drawn
from common.errors import UserError
from common.folds import split_folds
from conftest import COLORS, make_image


def finished_fold_run(folder, data):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"arguments": {"data": str(data)}}))
    metrics = {split: {"loss": 1.0, "top1": 50.0, "top3": 100.0} for split in ("train", "validation", "test")}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_a_repetition_lacking_its_last_folds_runs_is_refused(tmp_path):
    for name, color in COLORS.items():
        for i in range(3):
            make_image(tmp_path / "images" / name / f"{i}.png", color, i)
    folds = split_folds(tmp_path / "images", tmp_path / "folds", 3)
    assert len(folds) == 3
    for k in range(2):  # fold2's run is missing: fold0 and fold1 alone look like a complete 2-fold set
        finished_fold_run(tmp_path / "rep0" / f"fold{k}", tmp_path / "folds" / f"fold{k}")
    assert folds_drawn(tmp_path / "rep0" / "fold0") == 3
    with pytest.raises(UserError, match="holds 2 fold runs, but its runs trained on 3 folds"):
        fold_runs(tmp_path / "rep0")
    finished_fold_run(tmp_path / "rep0" / "fold2", tmp_path / "folds" / "fold2")
    assert fold_runs(tmp_path / "rep0") == [tmp_path / "rep0" / f"fold{k}" for k in range(3)]


def test_runs_on_folders_of_ones_own_are_taken_as_they_are(tmp_path):
    for k in range(2):
        finished_fold_run(tmp_path / "rep0" / f"fold{k}", tmp_path / "my_split")
    assert folds_drawn(tmp_path / "rep0" / "fold0") is None
    assert len(fold_runs(tmp_path / "rep0")) == 2
