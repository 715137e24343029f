import csv
import json
import os
import re
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from common import results
from conftest import COLORS, make_split

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


def hand_made_run(folder, classes, labels, probabilities, record_digest=True):
    """A run folder holding what the report reads: config.json and test_predictions.csv, written as a run writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    split = SimpleNamespace(paths=[str(folder / f"{i}.png") for i in range(len(labels))],
                            digests=[f"{i:040x}" for i in range(len(labels))], labels=torch.tensor(labels))
    digest = results.write_predictions(folder / "test_predictions.csv", split,
                                       torch.tensor(probabilities, dtype=torch.float64).log(), classes)
    results.write_config(folder, {"classes": classes, "split_sizes": {"test": len(labels)},
                                  **({"test_predictions_sha256": digest} if record_digest else {})})
    return folder


def edit_predictions(run, edit):
    with open(run / "test_predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with open(run / "test_predictions.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def small_run(folder, record_digest=True):
    return hand_made_run(folder, ["a", "b", "c"], [0, 1, 2, 2],
                         [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]], record_digest)


def test_a_true_class_changed_since_the_run_wrote_its_predictions_is_found(tmp_path):
    run = small_run(tmp_path)
    paths, _, labels, probabilities, classes = results.read_predictions(run)
    assert labels.tolist() == [0, 1, 2, 2] and classes == ["a", "b", "c"] and len(paths) == 4
    assert probabilities[1].tolist() == pytest.approx([0.2, 0.7, 0.1])
    edit_predictions(run, lambda rows: rows[4].__setitem__(2, "a"))  # its last image's true class c -> a
    with pytest.raises(ValueError, match="test_predictions.csv is not the file its run wrote: its SHA-256"):
        results.read_predictions(run)


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[1].__setitem__(3, "nan"), "a probability that is not a number from 0 to 1"),
    (lambda rows: rows[2].__setitem__(4, "1.5"), "a probability that is not a number from 0 to 1"),
    (lambda rows: rows[2].__setitem__(5, "-0.1"), "a probability that is not a number from 0 to 1"),
    (lambda rows: rows[3].__setitem__(3, "0.9"), "a row of probabilities that does not sum to 1"),
    (lambda rows: rows[1].__setitem__(2, "purple"), "a true class that is none of its classes .'purple'."),
    (lambda rows: rows.pop(), "3 rows for its run's 4 test images"),
    (lambda rows: rows[0].__setitem__(5, "d"), "other classes than its run's config.json"),
    (lambda rows: rows[1].__setitem__(3, "high"), "could not convert string to float"),
    (lambda rows: rows[1].pop(), "not a row of path, sha1, true class and a probability per class"),
])
def test_predictions_of_a_run_without_a_recorded_sha256_are_still_checked(tmp_path, edit, message):
    run = small_run(tmp_path, record_digest=False)  # a run from before runs recorded it: read, and checked
    assert results.read_predictions(run)[2].tolist() == [0, 1, 2, 2]
    edit_predictions(run, edit)
    with pytest.raises(ValueError, match=f"test_predictions.csv is damaged: {message}"):
        results.read_predictions(run)


HOSTILE_CLASSES = ["$\\undefined$", "a$b$c", "a|b", "<script>", "*x*"]  # math text, a cell's end, a tag, emphasis


def table_cells(markdown):
    """The cell count of each row of each table in `markdown` (a `|` escaped as `\\|` is no cell's end)."""
    tables, previous = [], ""
    for line in markdown.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(len(re.split(r"(?<!\\)\|", line)))
        previous = line
    return tables


def test_metrics_md_escapes_the_title(tmp_path):
    results.write_metrics(tmp_path, metrics(), "<script>a|b</script> *x*", "1 process")
    text = (tmp_path / "metrics.md").read_text()
    assert "<script>" not in text and "\\<script\\>a\\|b" in text and "\\*x\\*" in text
    assert [set(rows) for rows in table_cells(text)] == [{6}]  # 4 cells between 5 bars
    assert results.markdown_code("a `b` c") == "``a `b` c``" and results.markdown_text("a\nb") == "a b"


def test_figures_draw_class_names_and_titles_as_plain_text(tmp_path):
    n = len(HOSTILE_CLASSES)
    counts = results.confusion_matrix(torch.arange(n), torch.arange(n).roll(1), n)
    results.plot_confusion(tmp_path / "confusion.png", counts, HOSTILE_CLASSES, "$\\undefined$ <b>")
    history = [{"epoch": 1, "train_loss": 1, "train_top1": 50, "train_top3": 80, "val_loss": 1, "val_top1": 40,
                "val_top3": 70}]
    results.plot_history(tmp_path, [history], "$\\frac$")
    for name in ("confusion.png", "loss.png", "accuracy.png"):
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.slow
def test_a_run_and_predict_py_draw_class_names_matplotlib_would_read_as_math(tmp_path):
    import predict
    import task2_shallow
    data = make_split(tmp_path / "data", counts=(2, 1, 1), colors=dict(zip(HOSTILE_CLASSES[:3], COLORS.values())))
    task2_shallow.main(["--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "3",
                        "--precision", "fp32", "--compile", "off"])
    assert (tmp_path / "run" / "confusion.png").stat().st_size > 1000
    assert results.read_predictions(tmp_path / "run")[4] == sorted(HOSTILE_CLASSES[:3])
    edit_predictions(tmp_path / "run", lambda rows: rows[1].__setitem__(2, rows[2][2]))  # the run recorded its SHA-256
    with pytest.raises(ValueError, match="SHA-256 differs from the one in config.json"):
        results.read_predictions(tmp_path / "run")
    predict.main([str(tmp_path / "run"), str(data / "test"), "--pictures", str(tmp_path / "pictures")])
    assert (tmp_path / "pictures" / "test-confusion.png").stat().st_size > 1000
