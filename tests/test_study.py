"""studies/study.py: each config's interval, the study's paired comparisons, augment.png and its
refusals of bad input, from run folders made here (the studies' real runs take hours)."""
import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import tasks
from common import results, stats
from conftest import REPO, exit_code_and_output, make_split

spec = importlib.util.spec_from_file_location("studies_study", REPO / "studies" / "study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

CLASSES = ["a", "b"]


def fake_run(folder, right, epochs=3, seed=0):
    """A finished run's test_predictions.csv (image i right where right[i]) and history.csv."""
    folder.mkdir(parents=True)
    labels = torch.tensor([i % 2 for i in range(len(right))])
    predicted = torch.where(torch.tensor(right, dtype=torch.bool), labels, 1 - labels)
    log_probs = torch.log(torch.nn.functional.one_hot(predicted, 2).float() * 0.8 + 0.1)
    split = SimpleNamespace(paths=[f"img{i}.png" for i in range(len(right))], digests=[f"{i:040x}" for i in range(len(right))],
                            labels=labels)
    results.write_predictions(folder / "test_predictions.csv", split, log_probs, CLASSES)
    rng = np.random.default_rng(seed)
    results.write_history(folder, [{"epoch": e, "lr": 1e-3, "train_loss": 1.0, "train_top1": 10 * e + rng.uniform(0, 5),
                                    "train_top3": 100, "val_loss": 1.0, "val_top1": 5 * e + rng.uniform(0, 5),
                                    "val_top3": 100, "seconds": 1} for e in range(1, epochs + 1)])
    return folder


def configs(tmp_path, patterns):
    """config -> its run folders, one per seed's pattern of right (1) and wrong (0) test images."""
    return {name: [fake_run(tmp_path / name / f"seed{s}", right, seed=s) for s, right in enumerate(seeds)]
            for name, seeds in patterns.items()}


def row(table, start):
    return next(line for line in table.splitlines() if line.startswith(start))


def test_each_comparison_is_paired_and_says_whether_the_data_support_it(tmp_path):
    weak, strong = [1] * 10 + [0] * 30, [1] * 40  # B right on 30 more of 40 images, every seed
    folders = configs(tmp_path, {"shallow": [weak, weak], "netvlad_k4": [strong, strong], "netvlad_k16": [weak, weak]})
    table = study.evidence_table(folders, study.COMPARISONS["netvlad"])
    mean, low, high = stats.accuracy_interval([weak, weak])  # tested in test_stats.py
    assert row(table, "| shallow |") == f"| shallow | 25.00 % [{low:.1f}, {high:.1f}] | 2 |" and low < mean < high
    better = row(table, "| netvlad_k4 minus shallow |")
    assert better.startswith("| netvlad_k4 minus shallow | +75.00 [") and "| 2 | supported |" in better
    p, adjusted = float(better.split("|")[3]), float(better.split("|")[4])
    assert p < 1e-8 and adjusted == pytest.approx(3 * p, rel=1e-2)  # 30 images all one way: p = 2 / 2^30, the least of 3
    assert "the 3 comparisons below" in table  # k4 and k16 against shallow, and k4 against k16
    assert row(table, "| netvlad_k16 minus shallow |") == (
        "| netvlad_k16 minus shallow | +0.00 [+0.0, +0.0] | 1 | 1 | 2 | inconclusive |")
    assert "netvlad_k64" not in table  # a config without runs is left out of the comparisons


def test_configs_tested_on_other_images_are_not_compared(tmp_path):
    folders = configs(tmp_path, {"shallow": [[1, 0, 1, 0]], "shallow_augment": [[1, 1, 1, 0]]})
    (folders["shallow_augment"][0] / "test_predictions.csv").write_text(
        (folders["shallow_augment"][0] / "test_predictions.csv").read_text().replace(f"{0:040x}", f"{99:040x}"))
    table = study.evidence_table(folders, study.COMPARISONS["augment"])
    assert "| shallow_augment |" in table and "minus" not in table.split("| B minus A")[1]


def test_runs_without_predictions_get_one_line_and_no_test(tmp_path, capsys):
    folders = configs(tmp_path, {"shallow": [[1, 0]], "shallow_augment": [[1, 1]]})
    (folders["shallow"][0] / "test_predictions.csv").unlink()
    table = study.evidence_table(folders, study.COMPARISONS["augment"])
    assert "shallow: no interval or paired test" in capsys.readouterr().out
    assert "| shallow_augment |" in table and "minus" not in table.split("| B minus A")[1]


@pytest.mark.parametrize("seeds", [1, 3])
def test_augment_figure_has_a_panel_per_task_and_bands_over_seeds(tmp_path, seeds, monkeypatch):
    runs = {name: [[1, 0]] * seeds for name in ("shallow", "shallow_augment", "netvlad_k16",
                                                 "lite0_frozen", "lite0_frozen_augment", "lite0_finetuned")}
    folders = configs(tmp_path, runs)  # netvlad_k16 without its --augment twin: no panel
    drawn = {}
    real_save = results.save_figure

    def keep(fig, path):
        drawn["axes"] = fig.axes
        drawn["bands"] = [len(ax.collections) for ax in fig.axes]
        drawn["lines"] = [len(ax.lines) for ax in fig.axes]
        real_save(fig, path)
    monkeypatch.setattr(study.results, "save_figure", keep)
    assert study.plot_augmentation(tmp_path / "augment.png", folders, {name: 3 for name in runs})
    assert Image.open(tmp_path / "augment.png").size[0] > 0
    assert drawn["lines"] == [4, 6]  # train and validation per config: shallow's two, Lite0's three
    assert drawn["bands"] == ([4, 6] if seeds > 1 else [0, 0])
    assert "lite0_finetuned" in drawn["axes"][1].get_title()


def test_no_augment_figure_is_said_to_be_written_without_a_pair_to_draw(tmp_path):
    folders = configs(tmp_path, {"shallow": [[1, 0]]})  # --configs shallow alone: no panel has two configs
    assert study.plot_augmentation(tmp_path / "augment.png", folders, {"shallow": 3}) is False
    assert not (tmp_path / "augment.png").exists()


@pytest.mark.slow
def test_a_study_reads_relative_paths_beginning_with_a_dash_as_paths(tmp_path, monkeypatch):
    make_split(tmp_path / "-x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(study.STUDIES["netvlad"], "netvlad_k4", ("task3_netvlad", {"clusters": 4, "compile": "off"}))
    study.main(["netvlad", "--data", "./-x", "--out", "./-o", "--configs", "netvlad_k4", "--seeds", "1",
                "--epochs", "1"])  # before: the run's --data -x read as an option, "expected one argument"
    config = json.loads((tmp_path / "-o" / "netvlad_k4" / "seed0" / "config.json").read_text())
    assert config["arguments"]["data"] == "-x" and "| netvlad_k4 |" in (tmp_path / "-o" / "study.md").read_text()


def finished(folder, study_name, config_name):
    """fake_run plus the config.json and metrics.json by which the study reuses it as the finished 3-epoch
    seed-0 run of that config."""
    fake_run(folder, [1, 0, 1, 0])
    task, settings = study.STUDIES[study_name][config_name]
    arguments = tasks.load(task).config(**settings, epochs=3, out=folder).arguments()
    results.write_config(folder, {"task": task, "arguments": arguments, "parameters": {"trainable": 1}})
    metrics = {split: {"loss": 1.0, "top1": 50.0, "top3": 100.0} for split in ("train", "validation", "test")}
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def no_training(monkeypatch):
    """Where study.py fails to refuse before its runs, the test fails at once instead of training for hours."""
    def train(*args):
        raise AssertionError("trained a run where study.py must refuse first")
    monkeypatch.setattr(study, "run_or_reuse", train)


def refused(argv, capsys):
    """study.py's stderr where it must refuse argv: exit 2, one error line, no traceback."""
    code, _, err = exit_code_and_output(lambda: study.main(argv), capsys)
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.usefixtures("no_training")
def test_too_many_seeds_is_one_line_and_creates_nothing(tmp_path, capsys):
    argv = ["netvlad", "--seeds", str(study.MAX_SEEDS + 1), "--out", str(tmp_path / "out")]
    assert f"--seeds {study.MAX_SEEDS + 1}" in refused(argv, capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("no_training")
def test_a_folder_the_study_did_not_make_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "study.md").write_text("my own notes\n")
    assert "study.md" in refused(["netvlad", "--seeds", "1", "--out", str(tmp_path)], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["study.md"]
    assert (tmp_path / "study.md").read_text() == "my own notes\n"


def test_a_folder_the_study_made_is_its_own(tmp_path):
    (tmp_path / "shallow" / "seed0").mkdir(parents=True)
    (tmp_path / ".study.md.123.tmp").write_text("")  # left by a killed write
    (tmp_path / "study.md").write_text("netvlad: 3 epochs, --gamma 1\n\n| config |")
    assert study.foreign_entry(tmp_path, "netvlad") is None
    assert study.foreign_entry(tmp_path, "augment") == tmp_path / "study.md"  # another study's header
    (tmp_path / "shallow" / "notes.txt").write_text("")
    assert study.foreign_entry(tmp_path, "netvlad") == tmp_path / "shallow" / "notes.txt"


def test_a_damaged_history_of_a_reused_run_is_one_line_naming_it(tmp_path, capsys):
    finished(tmp_path / "shallow" / "seed0", "augment", "shallow")
    finished(tmp_path / "shallow_augment" / "seed0", "augment", "shallow_augment")
    damaged = tmp_path / "shallow_augment" / "seed0" / "history.csv"
    damaged.write_text("epoch\n" + "1" * 140_000 + "\n")  # a field over csv's 128 KB limit
    argv = ["augment", "--folds", "1", "--seeds", "1", "--epochs", "3", "--configs", "shallow", "--out", str(tmp_path)]
    assert str(damaged) in refused(argv, capsys)
    assert damaged.read_text() == "epoch\n" + "1" * 140_000 + "\n"


def fold_runs(folder, folds_right, train=40):
    """A seed's finished runs on each fold (fold k's test images right where folds_right[k] says),
    numbering the images across folds as one data set's."""
    runs, first = [], 0
    for k, right in enumerate(folds_right):
        run = fake_run(folder / f"fold{k}", right)
        rows = (run / "test_predictions.csv").read_text().splitlines()
        renumbered = [rows[0]] + [row.replace(f"img{i}.png", f"img{first + i}.png").replace(f"{i:040x}", f"{first + i:040x}")
                                  for i, row in enumerate(rows[1:])]
        (run / "test_predictions.csv").write_text("\n".join(renumbered) + "\n")
        results.write_config(run, {"classes": CLASSES, "split_sizes": {"train": train, "validation": 5, "test": len(right)}})
        runs.append(run)
        first += len(right)
    return runs


def test_cross_validated_configs_are_compared_fold_by_fold(tmp_path):
    weak = [[1] * 5 + [0] * 5, [1] * 6 + [0] * 4, [1] * 4 + [0] * 6]
    strong = [[1] * 10, [1] * 9 + [0], [1] * 10]
    folders = {"shallow": fold_runs(tmp_path / "shallow" / "seed0", weak),
               "netvlad_k16": fold_runs(tmp_path / "netvlad_k16" / "seed0", strong)}
    table = study.evidence_table(folders, study.COMPARISONS["netvlad"], folds=3)
    mean, low, high = stats.cv_interval([[50, 60, 40]], 10 / 40)  # tested in test_stats.py
    assert row(table, "| shallow |") == f"| shallow | {mean:.2f} % [{low:.1f}, {high:.1f}] | 3 |"
    difference, low, high, p = stats.cv_paired_difference([[100, 90, 100]], [[50, 60, 40]], 10 / 40)
    assert p > 0.05  # 3 folds: t with 2 degrees of freedom, however large the gap
    assert row(table, "| netvlad_k16 minus shallow |") == \
        f"| netvlad_k16 minus shallow | {difference:+.2f} [{low:+.1f}, {high:+.1f}] | {p:.3g} | {p:.3g} | 3 | inconclusive |"


def test_finished_runs_of_a_cross_validated_config_are_whole_seeds(tmp_path):
    for fold in range(3):
        finished(tmp_path / "shallow" / "seed0" / f"fold{fold}", "netvlad", "shallow")
    finished(tmp_path / "shallow" / "seed1" / "fold0", "netvlad", "shallow")  # seed 1 lacks folds 1 and 2
    runs = study.finished_runs(tmp_path / "shallow", 3, folds=3)
    assert runs == [tmp_path / "shallow" / "seed0" / f"fold{fold}" for fold in range(3)]


@pytest.mark.usefixtures("no_training")
def test_folds_with_data_or_a_folder_of_the_other_design_are_one_line(tmp_path, capsys):
    assert "--folds is for the demo data" in refused(["netvlad", "--folds", "3", "--data", str(tmp_path)], capsys)
    assert "--folds 0: give 1 (one split) to 100" in refused(["netvlad", "--folds", "0"], capsys)
    finished(tmp_path / "shallow" / "seed0", "netvlad", "shallow")  # a run on one split
    assert "holds runs on one split: pick another --out" in refused(["netvlad", "--out", str(tmp_path)], capsys)
