import contextlib
import errno
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import common.cli
import common.split
import reproduce
import tasks
from common import report, results, runs
from common.evidence import read_evidence
from common.options import parse_run_config
from common.reuse import PlannedRun, plan
from common.run_folder import lock
from conftest import COLORS, REPO, exit_code_and_output, make_image, make_split, with_signals
from test_cub import make_cub, make_tgz
from test_data_split import interrupt_after
from test_tasks import STRAYS, stray_repo


@pytest.fixture
def images(tmp_path):
    """An unsplit class folder: 8 tiny images in each of 3 colour classes."""
    seed = 0
    for name, color in COLORS.items():
        for i in range(8):
            seed += 1
            make_image(tmp_path / "images" / name / f"{i}.png", color, seed)
    return tmp_path / "images"


@pytest.mark.slow
def test_end_to_end_report_has_every_task(images, tmp_path, offline):
    out = tmp_path / "results"
    reproduce.main(["--data", str(images), "--out", str(out), "--epochs", "1", "--folds", "1", "--seeds", "2", "--compile", "off"])
    report = (out / "REPORT.md").read_text()
    for task in (t for t in tasks.all_tasks() if t.in_reproduction):  # task1_timm needs a network: only by name
        assert f"## {task.name}: {task.title}" in report
    # No torchvision weights offline: listed as unavailable with the file to fetch, never trained at random.
    for name, file in (("task1_googlenet", "googlenet-1378be20.pth"), ("task1_vgg", "vgg16-397923af.pth"),
                       ("task1_resnet", "resnet50-0676ba61.pth")):
        section = report.split(f"## {name}:")[1].split("\n## ")[0]
        assert "Weights unavailable" in section and file in section
        assert not (out / name / "seed0" / "metrics.json").exists()
    # The rest ran twice (seeds 0 and 1) and got a mean +- std table and the figures.
    trained = ("task1_efficientnet", "task1_efficientnet_lite1", "task1_efficientnet_lite2", "task2_shallow",
               "task3_netvlad")
    for name in trained:
        section = report.split(f"## {name}:")[1].split("\n## ")[0]
        assert "| Testing |" in section and " ± " in section
        assert all((out / name / f"seed{s}" / "metrics.json").exists() for s in (0, 1))
        assert (out / name / "loss.png").exists() and (out / name / "accuracy.png").exists()
    # The summary ranks the trained models and the majority-class baseline by mean test top-1.
    summary = report.split("## Summary")[1].split("\n## ")[0]
    ranked = [float(m) for m in re.findall(r"^\| [^|]+ \| ([\d.]+) ±", summary, re.M)]
    assert len(ranked) == len(trained) + 1 and ranked == sorted(ranked, reverse=True)
    assert "| Always the largest training class (" in summary
    # Each has a 95 % interval that holds its mean, the summary figure is on top, and the pairs are tested.
    for mean, low, high in re.findall(r"^\| [^|]+ \| ([\d.]+) ± [\d.]+ % \[([\d.]+), ([\d.]+)\]", summary, re.M):
        assert float(low) <= float(mean) <= float(high)
    assert report.index("](summary.png)") < report.index("## Summary") and (out / "summary.png").exists()
    comparisons = report.split("## Which differences the data support")[1].split("\n## ")[0]
    pairs = (len(trained) + 1) * len(trained) // 2  # every pair of the trained models and the baseline
    assert len(re.findall(r"^\|.*\| (?:supported|inconclusive) \|$", comparisons, re.M)) == pairs
    assert f"Holm p adjusts p for the {pairs} comparisons" in comparisons
    scores = report.split("## What each model learned")[1].split("\n## ")[0]
    assert len(re.findall(r"^\| .* \| [\d.]+ % \|$", scores, re.M)) == len(trained) + 1  # and the baseline
    # Per task: per-class scores, the confusion matrix over seeds, calibration and the confident mistakes.
    for name in trained:
        section = report.split(f"## {name}:")[1].split("\n## ")[0]
        assert "Per class (2 seeds pooled)" in section and "| true \\ predicted | blue | green | red |" in section
        for figure in ("confusion.png", "reliability.png", "top_losses.png"):
            assert f"]({name}/{figure})" in section and (out / name / figure).exists()
        # and its layers: the whole model's parameters (task 1's frozen backbone and its head)
        config = json.loads((out / name / "seed0" / "config.json").read_text())
        whole = config["parameters"]["total"] + (0 if config.get("finetuned", True) else config["backbone_parameters"])
        assert "Its layers, output shapes and parameters" in section
        drawn = f"]({name}/seed0/cluster_maps.png)" in section
        assert drawn == (name == "task3_netvlad") == (out / name / "seed0" / "cluster_maps.png").exists()
        assert f"| **total** | | | **{whole:,}** | **{config['parameters']['trainable']:,}** |" in section
        # its mistakes explained by Grad-CAM, where it made any, and every run's TensorBoard events
        made_mistakes = bool(read_evidence([out / name / f"seed{s}" for s in (0, 1)]).top_losses())
        assert ("Grad-CAM (Selvaraju et al., 2017) of the run that made it" in section) == made_mistakes
        assert all(list((out / name / f"seed{s}").glob("events.out.tfevents.*")) for s in (0, 1))


@pytest.mark.slow
def test_no_tensorboard_reaches_every_run_and_the_report_needs_no_events(images, tmp_path):
    out = tmp_path / "results"
    reproduce.main(["--data", str(images), "--out", str(out), "--epochs", "1", "--folds", "2", "--tasks", "task2_shallow",
                    "--compile", "off", "--no-tensorboard"])
    assert "| Testing |" in (out / "REPORT.md").read_text()
    assert [p.name for p in out.rglob("metrics.json")] == ["metrics.json"] * 2 and not list(out.rglob("events.*"))


@pytest.mark.slow
def test_a_run_without_test_predictions_is_reported_without_intervals_in_one_line(images, tmp_path, capsys):
    argv = ["--data", str(images), "--out", str(tmp_path / "r"), "--epochs", "1", "--folds", "1", "--seeds", "1",
            "--tasks", "task2_shallow", "--compile", "off"]
    reproduce.main(argv)
    (tmp_path / "r" / "task2_shallow" / "seed0" / "test_predictions.csv").unlink()  # as a run made before it was written
    capsys.readouterr()
    reproduce.main(argv)  # reuses the run
    printed = capsys.readouterr().out
    assert "task2_shallow: no intervals, per-class scores or mistakes" in printed and "--force" in printed
    report = (tmp_path / "r" / "REPORT.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| Shallow ConvNet |"))
    assert " ± " not in row and "[" not in row  # one seed, and no interval without its predictions


@pytest.mark.slow
def test_rerun_reuses_finished_runs_and_force_redoes_them(images, tmp_path):
    argv = ["--data", str(images), "--out", str(tmp_path / "r"), "--epochs", "1", "--folds", "1", "--seeds", "1",
            "--tasks", "task2_shallow", "--compile", "off"]
    reproduce.main(argv)
    metrics = tmp_path / "r" / "task2_shallow" / "seed0" / "metrics.json"
    first = metrics.stat().st_mtime_ns
    reproduce.main(argv)
    assert metrics.stat().st_mtime_ns == first
    reproduce.main(argv + ["--force"])
    assert metrics.stat().st_mtime_ns != first


@pytest.mark.slow
def test_cub_archive_splits_the_report_way(tmp_path):
    archive = make_tgz(make_cub(tmp_path / "cub"), tmp_path / "CUB_200_2011.tgz")
    out = tmp_path / "r"
    reproduce.main(["--cub", str(archive), "--out", str(out), "--epochs", "1", "--folds", "1", "--seeds", "1",
                    "--tasks", "task2_shallow", "--compile", "off"])
    report = (out / "REPORT.md").read_text()
    assert "the report's 7 CUB-200-2011 classes; one split 0.7/0.1/0.2 into 7 / 7 / 7" in report
    assert "compare rankings and gaps" not in report  # the report's own data: digits are comparable


def test_bad_arguments(tmp_path):
    with pytest.raises(reproduce.UserError, match="--seeds 0"):
        reproduce.main(["--seeds", "0", "--out", str(tmp_path)])
    with pytest.raises(reproduce.UserError, match="no such folder"):
        reproduce.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path)])


def test_out_that_is_a_file_or_cannot_be_created_is_one_error(images, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(reproduce.UserError, match="is a file, not a folder"):
        reproduce.main(["--data", str(images), "--out", str(tmp_path / "file")])
    assert (tmp_path / "file").read_text() == "mine"

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(reproduce.UserError, match="cannot create --out .*Read-only file system"):
        reproduce.main(["--data", str(images), "--out", str(tmp_path / "ro" / "results")])


def test_out_inside_the_source_images_is_refused_before_anything_is_created(images, tmp_path):
    before = sorted(p.name for p in images.iterdir())
    with pytest.raises(reproduce.UserError, match="inside .*would read the results as a class"):
        reproduce.main(["--data", str(images), "--out", str(images / "results")])
    assert sorted(p.name for p in images.iterdir()) == before


def test_a_second_reproduction_into_the_same_folder_is_refused(images, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    with lock(out, "--out"):
        with pytest.raises(reproduce.UserError, match="in use by another run"):
            reproduce.main(["--data", str(images), "--out", str(out), "--epochs", "1", "--tasks", "task2_shallow"])
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_an_interrupted_split_is_redone_not_reused(images, tmp_path, monkeypatch):
    out, real_place = tmp_path / "r", interrupt_after(3, monkeypatch)
    argv = ["--data", str(images), "--out", str(out), "--epochs", "1", "--folds", "1", "--seeds", "1", "--tasks", "task2_shallow",
            "--compile", "off"]
    with pytest.raises(KeyboardInterrupt):
        reproduce.main(argv)
    monkeypatch.setattr(common.split, "place", real_place)
    reproduce.main(argv)
    split = next((out / "splits").iterdir())
    assert (split / "split.csv").exists() and not (split / "split.csv.incomplete").exists()
    assert sum(1 for p in split.rglob("*.png")) == 24


@pytest.mark.parametrize("argv, message", [(["--device", "nonsense"], "not a device name"),
                                           (["--folds", "1", "--ratios", "0.5", "0.5", "0.5"], "summing to 1"),
                                           (["--folds", "0"], "--folds 0: give 1 .one split. to 100"),
                                           (["--folds", "-1"], "--folds -1: give 1 .one split. to 100"),
                                           (["--folds", str(10 ** 20)], "give 1 .one split. to 100"),
                                           (["--resplit"], "--resplit is for one split .--folds 1.: with --folds 5"),
                                           (["--folds", "3", "--ratios", "0.7", "0.1", "0.2"],
                                            "--ratios is for one split .--folds 1.: with --folds 3"),
                                           (["--seeds", str(10 ** 20)], "give 1 to 1000"),
                                           (["--jobs", str(2 ** 62)], "--jobs 4611686018427387904: give 1 to 1000"),
                                           (["--jobs", str(2 ** 63)], "give 1 to 1000"),
                                           (["--jobs", "0"], "--jobs 0: give 1 to 1000")])
def test_bad_options_are_refused_before_anything_is_created(images, tmp_path, argv, message):
    with pytest.raises(reproduce.UserError, match=message):
        reproduce.main(["--data", str(images), "--out", str(tmp_path / "r"), *argv])
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_damaged_finished_run_is_redone_or_refused(images, tmp_path):
    argv = ["--data", str(images), "--out", str(tmp_path / "r"), "--epochs", "1", "--folds", "1", "--tasks", "task2_shallow",
            "--compile", "off"]
    reproduce.main(argv)
    run = tmp_path / "r" / "task2_shallow" / "seed0"
    good = (run / "metrics.json").read_text()
    (run / "metrics.json").write_text("garbage")
    reproduce.main(argv)  # the checkpoint holds the finished run: evaluated again, same table
    assert (run / "metrics.json").read_text() == good
    (run / "config.json").write_text('{"arguments": {"epochs": 1}}')
    with pytest.raises(reproduce.UserError, match="config.json is unreadable or was not written by this project"):
        reproduce.main(argv)


QUICK = ("--folds", "1", "--epochs", "1", "--seeds", "1", "--tasks", "task3_netvlad", "--compile", "off")  # if not refused


@pytest.fixture
def refused(monkeypatch, capsys):
    """reproduce.py's command line, which must refuse its arguments: returns its exit code and stderr lines."""
    for setting in ("keep_freed_memory", "flush_denormals"):  # process-wide: not for the test process
        monkeypatch.setattr(common.cli, setting, lambda: None)

    def run(*argv):
        code, _, err = exit_code_and_output(lambda: reproduce.main([str(a) for a in argv]), capsys)
        return code, err.splitlines()
    return run


def contents(folder):
    """Every path below folder with its time and bytes: what must stay as it was (a FIFO is not read)."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def user_report(out):
    out.mkdir()
    (out / "REPORT.md").write_text("precious")


def split_folder(out):
    """What data_split.py makes: train/, validation/, test/ and its manifest."""
    make_split(out)
    (out / "split.csv").write_text("path,source,class,split,sha256\n")


def task_script_run(out):
    """A task script's own run in OUT/task2_shallow/, as `python task2_shallow.py` leaves results/."""
    (out / "task2_shallow").mkdir(parents=True)
    for name in ("config.json", "loss.png", "metrics.md"):
        (out / "task2_shallow" / name).write_text("theirs")


def own_splits_folder(out):
    (out / "splits" / "mine").mkdir(parents=True)


@pytest.mark.parametrize("make_out, foreign", [(user_report, "REPORT.md"), (split_folder, "split.csv"),
                                               (task_script_run, "task2_shallow/config.json"),
                                               (own_splits_folder, "splits/mine")])
def test_an_out_holding_files_of_others_is_refused_before_anything_is_written(images, tmp_path, refused, make_out,
                                                                              foreign):
    out = tmp_path / "out"
    make_out(out)
    before = contents(out)
    code, err = refused("--data", images, "--out", out, *QUICK)
    assert code == 2 and err == [f"error: --out {out} holds {foreign}, which reproduce.py did not write: "
                                 "pick a new folder, or one reproduce.py made"]
    assert contents(out) == before


def test_runs_of_a_task_whose_script_is_gone_are_named_so(images, tmp_path, refused):
    out = tmp_path / "out"
    (out / "task4_example" / "seed0").mkdir(parents=True)  # reproduce.py ran it while task4_example.py was here
    code, err = refused("--data", images, "--out", out, *QUICK)
    assert code == 2 and err == [f"error: --out {out} holds runs of task4_example, whose script task4_example.py is "
                                 f"no longer here: put the script back, or move {out / 'task4_example'} away"]


def test_stray_task_files_are_skipped_when_every_task_is_chosen(images, tmp_path, monkeypatch, capsys):
    repo = stray_repo(tmp_path / "repo", monkeypatch)
    shutil.copy(REPO / "task2_shallow.py", repo)
    args = reproduce.parse_args(["--data", str(images), "--out", str(tmp_path / "r")])
    assert args.tasks == ["task2_shallow"]
    assert capsys.readouterr().err.count("; skipped\n") == len(STRAYS)


def test_a_path_with_a_newline_stays_on_its_error_line(tmp_path, refused):
    data = tmp_path / "x\ntouch y"
    code, err = refused("--data", data, "--out", tmp_path / "new", *QUICK)
    assert code == 2 and err == [f"error: --data {str(data)!r}: no such folder"]


def test_foreign_entry_knows_what_reproduce_writes(tmp_path):
    out = tmp_path / "r"
    for folder in ("splits/images-0123abcd-seed0", "splits/-0123abcd-seed1", "splits/my\nimages-0123abcd-seed2",
                   "cub_7classes", ".cub_7classes.partial-x1y2", "task3_netvlad/seed0"):
        (out / folder).mkdir(parents=True)
    for name in (".REPORT.md.123.tmp", "task3_netvlad/loss.png", "task3_netvlad/.metrics.md.45.tmp", "task2_shallow"):
        (out / name).write_text("ours, or what a killed write of ours left")
    (out / "REPORT.md").write_text(report.REPORT_TITLE + "\n\nthe rest")
    assert reproduce.foreign_entry(out) is None
    (out / "REPORT.md").write_text("# My report")
    assert reproduce.foreign_entry(out) == out / "REPORT.md"
    (out / "task3_netvlad" / "seed0.bak").mkdir()
    assert reproduce.foreign_entry(out) == out / "task3_netvlad" / "seed0.bak"


def with_manifest(images):
    """Class folders holding data_split.py's manifest: a split, whatever its folders are called."""
    (images / "split.csv").write_text("path,source,class,split,sha256\n")
    return images


def with_folds_list(images):
    """Class folders holding data_split.py --folds' list: a set of folds, whatever its folders are called."""
    (images / "folds.csv").write_text("source,class,sha256,fold,k,seed\n")
    return images


@pytest.mark.parametrize("make_data", [lambda tmp_path, images: make_split(tmp_path / "split"),
                                       lambda tmp_path, images: with_manifest(images),
                                       lambda tmp_path, images: with_folds_list(images)])
def test_a_split_folder_as_data_is_refused_before_anything_is_created(images, tmp_path, refused, make_data):
    data = make_data(tmp_path, images)
    code, err = refused("--data", data, "--out", tmp_path / "new", *QUICK)
    assert code == 2 and err == [f"error: --data {data} is a split or folds folder (data_split.py's): reproduce.py "
                                 "--data takes a folder of class folders and splits it itself; the task scripts take "
                                 "a split folder"]
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("source, message", [("--data", "--data {}: no such folder"), ("--cub", "{} does not exist")])
def test_a_missing_source_leaves_no_out_behind(tmp_path, refused, source, message):
    code, err = refused(source, tmp_path / "missing", "--out", tmp_path / "new", *QUICK)
    assert code == 2 and err == ["error: " + message.format(tmp_path / "missing")]
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_reused_run_with_a_damaged_or_special_file_is_one_error(images, tmp_path):
    argv = ["--data", str(images), "--out", str(tmp_path / "r"), "--epochs", "1", "--folds", "1", "--seeds", "1",
            "--tasks", "task3_netvlad", "--compile", "off"]
    reproduce.main(argv)
    run = tmp_path / "r" / "task3_netvlad" / "seed0"
    env = {**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "cache")}
    for name, damage, message in (("history.csv", lambda p: p.write_text("epoch,lr\n1,banana\n"), "is missing or damaged"),
                                  ("history.csv", os.mkfifo, "is not a regular file"),  # reading it would wait forever
                                  ("config.json", os.mkfifo, "is not a regular file")):
        good = (run / name).read_bytes()
        (run / name).unlink()
        damage(run / name)
        before = contents(tmp_path / "r")
        done = subprocess.run([sys.executable, str(Path(reproduce.__file__)), *argv], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr  # above the error line: the progress bar
        assert done.stderr.splitlines()[-1] == f"error: {run / name} {message}: use --force to train that run again, " \
                                               "or another folder"
        assert contents(tmp_path / "r") == before  # nothing retrained or rewritten
        (run / name).unlink()
        (run / name).write_bytes(good)


@pytest.mark.slow
def test_augment_reaches_every_task_and_the_report_says_so(images, tmp_path, offline):
    out = tmp_path / "results"
    reproduce.main(["--data", str(images), "--out", str(out), "--epochs", "1", "--folds", "1", "--seeds", "1", "--compile", "off", "--augment",
                    "--tasks", "task2_shallow", "task1_efficientnet"])
    report = (out / "REPORT.md").read_text()
    assert "## task2_shallow: Shallow ConvNet, augmented" in report and "- Augmentation: random resized crops" in report
    for name in ("task2_shallow", "task1_efficientnet"):
        assert json.loads((out / name / "seed0" / "config.json").read_text())["arguments"]["augment"] is True


# These run task 3 (3,031 parameters) rather than task 2, whose checkpoints take 450 MB a run.
@pytest.mark.slow
def test_print_commands_lists_the_unfinished_runs_and_the_report_reuses_what_they_made(images, tmp_path):
    argv = ["--data", str(images), "--out", str(tmp_path / "r"), "--epochs", "1", "--folds", "1", "--seeds", "2",
            "--tasks", "task3_netvlad", "--compile", "off"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        reproduce.main([*argv, "--print-commands"])
    commands = printed.getvalue().splitlines()
    assert len(commands) == 2 and all("task3_netvlad.py" in c and "--force" in c for c in commands)
    assert not (tmp_path / "r" / "REPORT.md").exists()
    env = {**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    for command in commands:  # as a cluster scheduler would
        subprocess.run(shlex.split(command), check=True, env=env, capture_output=True)
    made = [(tmp_path / "r" / "task3_netvlad" / f"seed{s}" / "metrics.json").stat().st_mtime_ns for s in (0, 1)]
    reproduce.main(argv)
    assert [(tmp_path / "r" / "task3_netvlad" / f"seed{s}" / "metrics.json").stat().st_mtime_ns for s in (0, 1)] == made
    assert " ± " in (tmp_path / "r" / "REPORT.md").read_text()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        reproduce.main([*argv, "--print-commands"])
    assert printed.getvalue() == ""  # nothing left to run


@pytest.mark.slow
def test_jobs_trains_runs_as_concurrent_processes(images, tmp_path, monkeypatch):
    events = []  # ("start" | "end", pid), in the order the processes started and ended

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            events.append(("start", self.pid))

        def wait(self, *args, **kwargs):
            code = super().wait(*args, **kwargs)
            events.append(("end", self.pid))
            return code
    monkeypatch.setattr(runs.subprocess, "Popen", Recorded)
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "r"
    reproduce.main(["--data", str(images), "--out", str(out), "--epochs", "2", "--folds", "1", "--seeds", "2", "--jobs", "2",
                    "--tasks", "task3_netvlad", "--compile", "off", "--device", "cpu"])
    # Both runs were under way at once: the second process started before the first ended. (Files'
    # times say less: a loaded machine may start one process's Python seconds after the other's.)
    assert [kind for kind, _ in events] == ["start", "start", "end", "end"]
    runs_out = [out / "task3_netvlad" / f"seed{s}" for s in (0, 1)]
    assert all("Testing" in (run / "log.txt").read_text() for run in runs_out)
    assert " ± " in (out / "REPORT.md").read_text()


def test_the_bar_shows_how_far_each_concurrent_run_is(tmp_path):
    row = {"lr": 1e-3, "train_top1": 50.0, "train_top3": 90.0, "val_loss": 1.5, "val_top3": 80.0, "seconds": 0.7}
    (tmp_path / "a").mkdir()
    results.write_history(tmp_path / "a", [{**row, "epoch": 1, "train_loss": 2.0, "val_top1": 30.0},
                                           {**row, "epoch": 2, "train_loss": 1.25, "val_top1": 42.5}])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "history.csv").write_text("not,a\nhistory")  # damaged: shown as not yet started
    running = {tmp_path / "b": ("task3_netvlad seed 0", 100), tmp_path / "a": ("task2_shallow seed 1", 100),
               tmp_path / "c": ("task3_netvlad seed 1", 100)}
    assert runs.runs_under_way(running) == ("task2_shallow seed 1: epoch 2/100, val top-1 42.5 %; "
                                                 "task3_netvlad seed 0: starting; task3_netvlad seed 1: starting")


@pytest.mark.slow
def test_a_failed_run_process_is_one_error_naming_its_log(images, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["--data", str(images), "--out", str(tmp_path / "r"), "--jobs", "2", "--folds", "1", "--seeds", "1",
            "--tasks", "task3_netvlad", "--compile", "off", "--device", "cpu"]
    reproduce.main([*argv, "--epochs", "1"])
    (tmp_path / "r" / "task3_netvlad" / "seed0" / "last.pt").write_bytes(b"garbage")
    with pytest.raises(reproduce.UserError, match=r"task3_netvlad seed 0 failed \(exit code 2\): --resume: .*last.pt "
                                                  r"is corrupt or unreadable .*\(see .*log.txt\)"):
        reproduce.main([*argv, "--epochs", "2"])  # resumes the 1-epoch run, in a process of its own


def processes_naming(text):
    """Process ids whose command line holds `text` (read from /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
    return pids


def wait_for(condition, what, bound_s=600):
    """Until condition() holds; a test that waits on state, with a bound that fails it rather than going on."""
    deadline = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {bound_s} s")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("stop, ignored", [
    (signal.SIGTERM, ()),                # a scheduler's kill
    (signal.SIGHUP, ()),                 # a closed terminal
    (signal.SIGTERM, (signal.SIGINT,)),  # `kill` of a background job, which its runs inherit SIGINT ignored from
])
def test_a_stop_signal_stops_every_concurrent_run_after_a_checkpoint(images, tmp_path, stop, ignored):
    out, repo = tmp_path / "r", Path(reproduce.__file__).parent
    command = [sys.executable, str(repo / "reproduce.py"), "--data", str(images), "--out", str(out), "--epochs", "500",
               "--folds", "1", "--seeds", "2", "--jobs", "2", "--tasks", "task3_netvlad", "--compile", "off", "--device", "cpu"]
    parent = subprocess.Popen(with_signals(command, ignored),
                              env={**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "cache")},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = [out / "task3_netvlad" / f"seed{s}" for s in (0, 1)]
    try:
        wait_for(lambda: all((run / "history.csv").exists() for run in runs) or parent.poll() is not None,
                 "both runs training")
        assert parent.poll() is None, parent.communicate()
        parent.send_signal(stop)
        _, err = parent.communicate(timeout=600)  # returns once the runs have stopped
        assert processes_naming(str(out)) == []  # before: SIGHUP left both runs training unattended
        assert parent.returncode == 130 and "interrupted" in err
        for run in runs:
            assert "stopped after epoch" in (run / "log.txt").read_text() and (run / "last.pt").exists()
    finally:
        for pid in processes_naming(str(out)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_a_cache_inside_the_source_is_refused_before_anything_is_written(images, tmp_path, refused, monkeypatch):
    monkeypatch.setattr("common.cache.CACHE_DIR", images / "cache")  # its folders would become classes
    code, err = refused("--data", images, "--out", tmp_path / "new", *QUICK)
    assert code == 2 and err == [f"error: the cache folder {images / 'cache'} is inside {images}, which this run "
                                 "reads: set REPRO_CACHE_DIR to a folder outside the data"]
    assert not (tmp_path / "new").exists() and not (images / "cache").exists()


def print_commands(*argv):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        reproduce.main([*map(str, argv), "--print-commands"])
    return printed.getvalue()


@pytest.mark.slow
def test_print_commands_prints_one_quoted_line_per_run_whatever_the_paths_hold(images, tmp_path):
    out = tmp_path / "r\n; touch injected1; $(touch injected2) `touch injected3` \udcff'\"\\"
    printed = print_commands("--data", images, "--out", out, "--epochs", "1", "--folds", "1", "--seeds", "2",
                             "--tasks", "task3_netvlad", "--compile", "off")
    lines = printed.split("\n")[:-1]
    assert len(lines) == 2  # before: a newline in a path split one command over two lines
    for seed, line in enumerate(lines):  # as `eval "$(sed -n Np runs.txt)"` reads it, in bash
        done = subprocess.run(["bash", "-c", 'eval "words=($1)"; printf "%s\\0" "${words[@]}"', "bash", line],
                              cwd=tmp_path, capture_output=True, check=True)
        argv = [os.fsdecode(word) for word in done.stdout.split(b"\0")[:-1]]
        assert argv[:2] == [sys.executable, str(Path(reproduce.__file__).parent / "task3_netvlad.py")]
        config = parse_run_config(tasks.load("task3_netvlad"), argv[2:])  # as the task script reads it
        assert config.out == out / "task3_netvlad" / f"seed{seed}" and config.data.parent == out / "splits"
    assert not list(tmp_path.glob("injected*"))  # no word of a path ran as a command


@pytest.mark.parametrize("name", [".", "my\nimages"])
def test_a_source_named_dot_or_with_a_newline_splits_and_reruns(images, tmp_path, monkeypatch, name):
    data = images if name == "." else images.rename(tmp_path / name)
    monkeypatch.chdir(data)
    argv = ("--data", name if name == "." else data, "--out", tmp_path / "r", *QUICK)
    print_commands(*argv)
    assert print_commands(*argv)  # before: the second run refused the split folder the first one made
    assert [p.name[:-len("-01234567-seed0")] for p in (tmp_path / "r" / "splits").iterdir()] == \
           ["images" if name == "." else "my_images"]


def test_a_class_added_to_the_source_is_split_afresh(images, tmp_path):
    argv = ("--data", images, "--out", tmp_path / "r", *QUICK)
    print_commands(*argv)
    for i in range(8):
        make_image(images / "yellow" / f"{i}.png", (230, 220, 30), 100 + i)
    line = print_commands(*argv)
    split = parse_run_config(tasks.load("task3_netvlad"), shlex.split(line)[2:]).data
    assert (split / "train" / "yellow").is_dir()  # before: the old split, without yellow, was reused silently
    assert len(list((tmp_path / "r" / "splits").iterdir())) == 2  # the first split is left as it was


@pytest.mark.slow
def test_a_reused_split_whose_manifest_is_a_fifo_or_damaged_is_one_error(images, tmp_path, refused, capsys):
    argv = ("--data", images, "--out", tmp_path / "r", *QUICK)
    print_commands(*argv)
    capsys.readouterr()  # the split's table
    split = next((tmp_path / "r" / "splits").iterdir())
    (split / "split.csv").write_text("path,source,class,split,sha256\n" + "x" * 200_000 + ",a,b,train,0\n")
    code, err = refused(*argv)
    assert code == 2 and err == [f"error: {split / 'split.csv'} is damaged (field larger than field limit (131072)); "
                                 f"delete {split} to split again"]
    (split / "split.csv").unlink()
    os.mkfifo(split / "split.csv")
    done = subprocess.run([sys.executable, reproduce.__file__, *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "cache")}, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == [  # before: it waited on the FIFO forever
        f"error: {split / 'split.csv'} is not a regular file (a FIFO, device or folder); delete {split} to split again"]


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_fifo_in_place_of_a_runs_log_is_one_error(images, tmp_path, jobs):
    log = tmp_path / "r" / "task3_netvlad" / "seed0" / "log.txt"
    log.parent.mkdir(parents=True)
    os.mkfifo(log)
    done = subprocess.run([sys.executable, reproduce.__file__, "--data", str(images), "--out", str(tmp_path / "r"),
                           *QUICK, "--jobs", jobs, "--device", "cpu"], capture_output=True, text=True,
                          env={**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "cache")}, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr  # before: it waited on the FIFO forever
    assert done.stderr.splitlines()[-1] == f"error: {log} is not a regular file (a FIFO, device or folder)"


@pytest.mark.parametrize("code", [130, 143, 129])  # Ctrl-C, SIGTERM, SIGHUP: each saved a checkpoint first
def test_a_run_process_stopped_by_a_signal_is_reported_as_stopped_not_failed(tmp_path, monkeypatch, code):
    import queue

    class Stopped:
        def __init__(self, *args, **kwargs):
            pass

        def wait(self):
            return code
    monkeypatch.setattr(runs.subprocess, "Popen", Stopped)
    devices = queue.Queue()
    devices.put("cpu")
    task = tasks.load("task3_netvlad")
    plan = PlannedRun(task, task.config(out=tmp_path / "r" / "run", epochs=100))
    with pytest.raises(reproduce.UserError, match="task3_netvlad seed 0 was stopped .*run reproduce.py again"):
        runs.run_as_process(plan, devices, 1, set(), runs.Running(None))


@pytest.mark.parametrize("code, error", [(2, "UserError"), (3, "WeightsUnavailable")])
def test_a_run_process_says_why_it_failed_in_its_outcome_file_not_its_log(tmp_path, monkeypatch, code, error):
    import queue

    class Failed:
        def __init__(self, argv, env, **kwargs):
            self.outcome = Path(env[common.cli.OUTCOME])

        def wait(self):
            self.outcome.write_text(json.dumps({"exit_code": code, "error": "no weights here"}))
            return code
    monkeypatch.setattr(runs.subprocess, "Popen", Failed)
    devices = queue.Queue()
    devices.put("cpu")
    task = tasks.load("task3_netvlad")
    plan = PlannedRun(task, task.config(out=tmp_path / "run", epochs=100))
    with pytest.raises(Exception) as raised:
        runs.run_as_process(plan, devices, 1, set(), runs.Running(None))
    assert type(raised.value).__name__ == error
    assert str(raised.value) == ("no weights here" if code == 3 else
                                 f"task3_netvlad seed 0 failed (exit code 2): no weights here (see {tmp_path / 'run' / 'log.txt'})")


def finished_run(out, task, argv):
    """What a finished run of the task with these options leaves in out for reuse to read (config.json
    and metrics.json), without training it."""
    config = parse_run_config(task, [*argv, f"--out={out}"])
    out.mkdir(parents=True)
    results.write_config(out, {"task": task.name, "arguments": config.arguments(),
                               "parameters": {"trainable": 1, "total": 1}})
    (out / "metrics.json").write_text(json.dumps({split: {m: 50.0 for m, _ in results.COLUMNS}
                                                  for split, _ in results.ROWS}))


@pytest.mark.parametrize("task, other, differences", [
    ("task3_netvlad", ["--lr", "0.5", "--gamma", "0.5"], "--lr 0.5 there, 0.001 asked; --gamma 0.5 there, 0.9 asked"),
    ("task3_netvlad", ["--augment"], "--augment True there, False asked"),
    ("task1_timm", ["--model", "mobilenetv3_small_050", "--no-pretrained"],
     "--model mobilenetv3_small_050 there, resnet18 asked; --no-pretrained True there, False asked")])
def test_a_finished_run_with_other_settings_is_refused_for_reuse(images, tmp_path, refused, capsys, task, other,
                                                                 differences):
    argv = ("--data", images, "--out", tmp_path / "r", *QUICK[:-3], task, "--compile", "off")
    planned = shlex.split(print_commands(*argv))[2:]  # as a cluster would run it
    run = tmp_path / "r" / task / "seed0"
    finished_run(run, tasks.load(task), planned)
    assert print_commands(*argv) == ""  # that run, finished: reused
    shutil.rmtree(run)
    finished_run(run, tasks.load(task), [*planned, *other])  # before: reused, and reported as the default's
    capsys.readouterr()  # the split's table
    code, err = refused(*argv)
    assert code == 2 and err == [f"error: {run} holds a run with other settings ({differences}): "
                                 "use --force or another folder"]


def test_a_run_of_another_task_is_refused_for_reuse(tmp_path):
    task3 = tasks.load("task3_netvlad")
    finished_run(tmp_path / "run", tasks.load("task2_shallow"), [])
    with pytest.raises(reproduce.UserError, match=r"holds a run with other settings \(task task2_shallow there, "
                                                  r"task3_netvlad asked; --clusters unset there, 16 asked; "):
        plan(task3, task3.config(out=tmp_path / "run", epochs=100))


def test_paths_beginning_with_a_dash_reach_the_task_as_paths(images, tmp_path, monkeypatch):
    images.rename(tmp_path / "-x")
    monkeypatch.chdir(tmp_path)
    planned = shlex.split(print_commands("--data", "./-x", "--out", "./-o", *QUICK))[2:]
    config = parse_run_config(tasks.load("task3_netvlad"), planned)  # before: "--data: expected one argument"
    assert config.out == Path("-o/task3_netvlad/seed0") and config.data.parent == Path("-o/splits")


@pytest.mark.slow
def test_a_run_process_reads_relative_paths_beginning_with_a_dash_as_reproduce_does(images, tmp_path, monkeypatch):
    images.rename(tmp_path / "-x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    reproduce.main(["--data", "./-x", "--out", "./-o", *QUICK, "--jobs", "2", "--device", "cpu"])
    assert (tmp_path / "-o" / "task3_netvlad" / "seed0" / "metrics.json").is_file()  # not under the repository
    assert " Testing " in (tmp_path / "-o" / "REPORT.md").read_text()


# -----------------------------------------------------------------------------
# k-fold cross-validation, the default

CROSS_VALIDATED = ("--folds", "3", "--epochs", "1", "--tasks", "task3_netvlad", "task2_shallow", "--compile", "off")


def pooled_test_images(out, task, rep=0, folds=3):
    """Every fold's test images of a repetition, as source paths (class/file), from their predictions."""
    pooled = []
    for fold in range(folds):
        run = out / task / f"rep{rep}" / f"fold{fold}"
        data = Path(json.loads((run / "config.json").read_text())["arguments"]["data"])
        pooled += [Path(path).relative_to(data / "test").as_posix() for path in results.read_predictions(run)[0]]
    return pooled


@pytest.mark.slow
def test_cross_validation_tests_every_image_once_and_the_report_says_how(images, tmp_path):
    out = tmp_path / "r"
    reproduce.main(["--data", str(images), "--out", str(out), *CROSS_VALIDATED])
    sources = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    for task in ("task2_shallow", "task3_netvlad"):
        assert sorted(pooled_test_images(out, task)) == sources  # every image once
    text = (out / "REPORT.md").read_text()
    assert "split into 3 stratified folds, one repetition" in text and "every image is a test image once" in text
    assert "mean ± sample std over the 3 folds" in text and "corrected repeated k-fold t-test" in text
    comparison = text.split("## Which differences the data support")[1].split("\n## ")[0]
    assert len(re.findall(r"^\|.*\| (?:supported|inconclusive) \|$", comparison, re.M)) == 3  # and the baseline
    assert "Runs: `task2_shallow/rep*/fold*/`" in text and not (out / "task2_shallow" / "seed0").exists()


@pytest.mark.slow
def test_cross_validated_runs_are_reused_and_continued_fold_by_fold(images, tmp_path):
    out = tmp_path / "r"
    argv = ["--data", str(images), "--out", str(out), "--folds", "3", "--tasks", "task3_netvlad", "--compile", "off"]
    reproduce.main([*argv, "--epochs", "1"])
    made = [(out / "task3_netvlad" / "rep0" / f"fold{k}" / "metrics.json").stat().st_mtime_ns for k in range(3)]
    reproduce.main([*argv, "--epochs", "1"])  # everything reused
    assert [(out / "task3_netvlad" / "rep0" / f"fold{k}" / "metrics.json").stat().st_mtime_ns for k in range(3)] == made
    reproduce.main([*argv, "--epochs", "2"])  # each fold's run continues from its checkpoint to epoch 2
    for k in range(3):
        history = results.read_history(out / "task3_netvlad" / "rep0" / f"fold{k}")
        assert [int(row["epoch"]) for row in history] == [1, 2]


def test_each_repetition_draws_its_own_folds_and_print_commands_lists_every_fold(images, tmp_path):
    out = tmp_path / "r"
    argv = ("--data", images, "--out", out, "--folds", "2", "--seeds", "2", "--epochs", "1", "--tasks", "task3_netvlad")
    commands = print_commands(*argv).splitlines()
    assert len(commands) == 4  # 2 folds x 2 repetitions
    for rep in (0, 1):
        for fold in (0, 1):
            assert sum(command.count(f"rep{rep}/fold{fold}") for command in commands) == 2  # its --data and --out
    splits = sorted((out / "splits").iterdir())
    assert [s.name[-4:] for s in splits] == ["rep0", "rep1"]
    tested = [set((s / "fold0" / "split.csv").read_text().splitlines()) for s in splits]
    assert tested[0] != tested[1]  # another seed, other folds


def test_a_class_with_fewer_images_than_folds_is_refused_before_anything_is_written(images, tmp_path, refused):
    for extra in list((images / "red").iterdir())[2:]:
        extra.unlink()  # red keeps 2 images
    code, err = refused("--data", images, "--out", tmp_path / "new", "--folds", "3", "--tasks", "task3_netvlad")
    assert code == 2 and len(err) == 1 and "class red has 2 images, fewer than --folds 3" in err[0]
    assert not (tmp_path / "new").exists()


def test_a_fold_edited_since_it_was_drawn_is_one_error(images, tmp_path, refused, capsys):
    argv = ("--data", images, "--out", tmp_path / "r", "--folds", "2", "--epochs", "1", "--tasks", "task3_netvlad")
    print_commands(*argv)  # draws the folds
    capsys.readouterr()
    fold = next((tmp_path / "r" / "splits").iterdir()) / "fold1"
    manifest = (fold / "split.csv").read_text().splitlines()
    test_row = next(i for i, line in enumerate(manifest) if ",test," in line)
    manifest[test_row] = manifest[test_row].replace(",test,", ",train,").replace("test/", "train/", 1)
    (fold / "split.csv").write_text("\n".join(manifest) + "\n")
    code, err = refused(*argv, "--print-commands")
    assert code == 2 and err == [f"error: {fold / 'split.csv'}: its test images are not fold 1 of folds.csv: it was "
                                 "edited or is from another split: use --force to draw them again, or another --out"]
