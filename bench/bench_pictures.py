"""What the pictures and logs cost a finished reproduction: each task's Grad-CAM of REPORT.md's
mistakes, every run's TensorBoard events, its layer table (architecture.md) and task 3's cluster
maps, each made again from the finished runs in OUT and timed, beside the minutes REPORT.md says the
whole reproduction took. Nothing in OUT is changed: the files go to a temporary folder.

    python bench/bench_pictures.py results/reproduce
"""
import argparse
import functools
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
import tasks  # noqa: E402
from common.architecture import architecture_markdown  # noqa: E402
from common.cli import UserError, run_main  # noqa: E402
from common.cluster_maps import plot_cluster_maps  # noqa: E402
from common.data import load_splits  # noqa: E402
from common.evidence import read_evidence  # noqa: E402
from common.report_task import explained_mistakes  # noqa: E402
from common.results import read_history  # noqa: E402
from common.reuse import read_config  # noqa: E402
from common.runtime import cpu_flags  # noqa: E402
from common.saved_run import image_model_of  # noqa: E402
from common.tensorboard_log import EventLog  # noqa: E402


def seconds(work):
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def task_runs(out):
    """{task name: its run folders in read_evidence's order} of the finished reproduction in OUT, and its folds."""
    found, folds = {}, 1
    for task_folder in sorted(p for p in out.iterdir() if p.is_dir() and tasks.SCRIPT_NAME.fullmatch(p.name)):
        runs = sorted(task_folder.glob("rep*/fold*/metrics.json")) or sorted(task_folder.glob("seed*/metrics.json"))
        if runs:
            found[task_folder.name] = [run.parent for run in runs]
            folds = max(folds, len({run.parent.name for run in runs if run.parent.name.startswith("fold")}))
    return found, folds


def write_events(run, folder):
    """The run's events as training wrote them: every epoch of history.csv, then the test metrics and confusion image."""
    config, metrics = read_config(run), json.loads((run / "metrics.json").read_text())
    history = [{name: float(value) for name, value in row.items()} for row in read_history(run)]
    log = EventLog(folder, True)
    for row in history:
        log.epoch({**row, "epoch": int(row["epoch"])})
    log.finish(config, Path(config["data"]), metrics, len(history), run / "confusion.png")
    log.close()


def costs(name, runs, folds, scratch):
    """Seconds of each picture or log of a task, over its runs."""
    task = tasks.load(name)
    models = [image_model_of(task, run) for run in runs]
    found = read_evidence(runs, folds)
    timed = {"Grad-CAM of the mistakes": seconds(lambda: explained_mistakes(
                 found.top_losses(), runs, found.classes, functools.partial(image_model_of, task))),
             "TensorBoard events": sum(seconds(lambda: write_events(run, scratch / name / run.parent.name / run.name))
                                       for run in runs),
             "architecture.md": sum(seconds(lambda: architecture_markdown(model, name)) for model in models)}
    if hasattr(models[0], "netvlad"):
        splits = [load_splits(Path(read_config(run)["data"])) for run in runs]
        timed["cluster_maps.png"] = sum(seconds(lambda: plot_cluster_maps(
            scratch / f"{name}.png", model, data.test, data.classes, name, "cpu")) for model, data in zip(models, splits))
    return timed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, metavar="OUT", help="a finished reproduction's folder (holds REPORT.md)")
    args = parser.parse_args(argv)
    report = args.out / "REPORT.md"
    made = re.search(r" in ([\d.]+) minutes, ", report.read_text()) if report.is_file() else None
    if made is None:
        raise UserError(f"{args.out} holds no REPORT.md of a finished reproduction")
    whole = 60 * float(made[1])
    runs, folds = task_runs(args.out)
    print(f"{os.cpu_count()} CPUs, flags: {cpu_flags()}\nreproduction: {whole / 60:.1f} min ({sum(map(len, runs.values()))} runs)")
    total = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for name, task_folders in runs.items():
            for what, spent in costs(name, task_folders, folds, Path(scratch)).items():
                total += spent
                print(f"{name:28s} {what:26s} {spent:7.2f} s  {100 * spent / whole:5.2f} %")
    print(f"{'all of them':55s} {total:7.2f} s  {100 * total / whole:5.2f} % of the reproduction")


if __name__ == "__main__":
    run_main(main)
