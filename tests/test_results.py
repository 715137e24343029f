import csv
import json
import os
import time

import pytest
import torch
from PIL import Image

from common import results

RUNS = [{"train": {"loss": 1.0, "top1": 50.0, "top3": 80.0}, "test": {"loss": 2.0, "top1": 40.0, "top3": 90.0}},
        {"train": {"loss": 3.0, "top1": 70.0, "top3": 80.0}, "test": {"loss": 2.0, "top1": 60.0, "top3": 90.0}},
        {"train": {"loss": 2.0, "top1": 60.0, "top3": 80.0}, "test": {"loss": 2.0, "top1": 80.0, "top3": 90.0}}]


def test_mean_and_sample_std_against_hand_computed_numbers():
    stats = results.mean_std(RUNS)
    assert stats["train"]["loss"] == pytest.approx((2.0, 1.0))      # values 1, 3, 2: mean 2, sample std 1
    assert stats["train"]["top1"] == pytest.approx((60.0, 10.0))
    assert stats["test"]["top1"] == pytest.approx((60.0, 20.0))
    assert stats["test"]["top3"] == pytest.approx((90.0, 0.0))
    assert results.mean_std(RUNS[:1])["test"]["top1"] == (40.0, 0.0)


def metrics():
    return {split: {"loss": 0.5 + i, "top1": 90.0 - i, "top3": 99.5} for i, split in
            enumerate(("train", "validation", "test"))}


def test_table_has_the_report_layout():
    lines = results.format_table(metrics()).splitlines()
    assert lines[0] == "| | Logloss | Top 1 accuracy | Top 3 accuracy |"
    assert lines[2] == "| Training | 0.5000 | 90.00 % | 99.50 % |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["Training", "Validation", "Testing"]
    assert "| Testing | 2.5000 ± 0.1000 | 88.00 ± 1.00 % |" in results.format_table(
        {s: {"loss": (0.5 + i, 0.1), "top1": (90.0 - i, 1.0), "top3": (99.5, 0.0)}
         for i, s in enumerate(("train", "validation", "test"))})


def test_every_result_file_is_written_and_parses(tmp_path):
    results.write_metrics(tmp_path, metrics(), "A model")
    history = [{"epoch": e, "lr": 1e-3, "train_loss": 1 / e, "train_top1": 50 + e, "train_top3": 80,
                "val_loss": 1.2 / e, "val_top1": 40 + e, "val_top3": 70, "seconds": 0.1} for e in (1, 2, 3)]
    results.write_history(tmp_path, history)
    results.write_config(tmp_path, {"seed": 0, "path": tmp_path})
    results.plot_history(tmp_path, [history], "A model")
    counts = results.confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert counts.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    results.plot_confusion(tmp_path / "confusion.png", counts, ["a", "b", "c"], "A model")

    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics()
    assert (tmp_path / "metrics.md").read_text().startswith("**A model**")
    with open(tmp_path / "metrics.csv") as f:
        assert [row[0] for row in csv.reader(f)] == ["split", "Training", "Validation", "Testing"]
    assert [int(float(r["epoch"])) for r in results.read_history(tmp_path)] == [1, 2, 3]
    assert json.loads((tmp_path / "config.json").read_text())["path"] == str(tmp_path)
    for name in ("loss.png", "accuracy.png", "confusion.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 300
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_plot_of_several_seeds(tmp_path):
    histories = [[{"epoch": e, "lr": 1e-3, "train_loss": s + 1 / e, "train_top1": 50, "train_top3": 80,
                   "val_loss": 1.2 / e, "val_top1": 40, "val_top3": 70, "seconds": 0.1} for e in (1, 2)]
                 for s in range(3)]
    results.plot_history(tmp_path, histories, "seeds")
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_curves_of_histories_read_back_from_csv_have_numeric_epochs(tmp_path):
    import matplotlib.pyplot as plt
    history = [{"epoch": e, "lr": 1e-3, "train_loss": 1 / e, "train_top1": 50, "train_top3": 80,
                "val_loss": 1.2 / e, "val_top1": 40, "val_top3": 70, "seconds": 0.1} for e in (1, 2, 10)]
    results.write_history(tmp_path, history)
    fig, ax = plt.subplots()
    results.curve(ax, [results.read_history(tmp_path)] * 2, "train_loss")
    assert list(ax.lines[0].get_xdata()) == [1, 2, 10]  # numbers, not category labels
    assert list(ax.lines[0].get_ydata()) == pytest.approx([1, 0.5, 0.1])
    plt.close(fig)


def test_a_fifo_in_place_of_the_history_is_an_os_error_not_a_wait(tmp_path):
    os.mkfifo(tmp_path / "history.csv")
    with pytest.raises(OSError, match="history.csv is not a regular file"):
        results.read_history(tmp_path)  # before the check, open() waited for a writer forever


def test_a_history_field_over_the_csv_limit_is_a_damaged_file(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,lr\n1," + "9" * 200_000 + "\n")  # csv reads fields up to 128 KB
    with pytest.raises(ValueError, match="history.csv is damaged: field larger than field limit"):
        results.read_history(tmp_path)


def test_a_confusion_figure_of_many_classes_draws_the_most_confused_and_the_csv_holds_all(tmp_path, capsys):
    n = 300
    labels = torch.arange(n).repeat(3)
    predictions = labels.clone()
    predictions[:40] = (labels[:40] + 1) % n  # classes 0..40 are the confused ones
    counts = results.confusion_matrix(labels, predictions, n)
    classes = [f"class {i}" for i in range(n)]
    started = time.perf_counter()
    results.write_confusion_csv(tmp_path / "confusion.csv", counts, classes)
    results.plot_confusion(tmp_path / "confusion.png", counts, classes, "A model", tmp_path / "confusion.csv")
    assert time.perf_counter() - started < 20  # was minutes (and 24 GB at 800 classes)
    assert capsys.readouterr().out == "confusion.png draws the 30 most confused of 300 classes; all in confusion.csv\n"
    with Image.open(tmp_path / "confusion.png") as image:
        assert image.width < 3000 and image.height < 3000  # 30 classes' worth, not 300
    with open(tmp_path / "confusion.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + n and all(len(row) == 1 + n for row in rows)
    assert rows[1][:3] == ["class 0", "2", "1"] and sum(int(v) for row in rows[1:] for v in row[1:]) == 3 * n
    assert results.most_confused(counts, 30).tolist() == list(range(1, 31))  # 2 errors each, in class order


def test_trained_by_says_how_many_processes_and_their_devices(tmp_path):
    assert results.trained_by({"processes": 1, "device": "cpu"}) == "1 process"
    assert results.trained_by({"processes": 2, "device": "cpu"}) == "2 processes on cpu"
    assert results.trained_by({"processes": 2, "device": "cuda:0", "rank_devices": ["cuda:1", "cuda:0"]}) == \
        "2 processes on cuda:0, cuda:1"
    assert results.trained_by({"device": "cpu"}) == "process count not recorded"  # a run from before it was
    results.write_metrics(tmp_path, metrics(), "A model", "2 processes on cpu")
    assert (tmp_path / "metrics.md").read_text().startswith("**A model** (2 processes on cpu)\n")
