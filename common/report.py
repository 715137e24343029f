"""REPORT.md: what reproduce.py writes once every run is done, a table and figures per task over
its seeds, a summary ranked by test top-1, and the 2020 course report's own numbers beside ours."""
import math
import os
import platform
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from common import results
from common.errors import UserError
from common.files import atomic_write
from common.reuse import read_config

REPORT_TITLE = "# Reproduction: small-data image classification (CS 6910 Assignment 3 report, 2020)"


def over_seeds(n):
    return f"mean ± sample std over {n} seeds" if n > 1 else "one run (seed 0)"


@dataclass(frozen=True)
class Reproduction:
    """How REPORT.md was made, as its header says."""
    command: list        # reproduce.py's arguments
    data: str            # what was split
    ratios: tuple        # train, validation, test
    sizes: dict          # split -> images (the first seed's split)
    seeds: int
    resplit: bool        # a new split per seed
    epochs: int = None   # every task's, for a quick look; None: each task's own
    augment: bool = False
    course_data: bool = False  # the 2020 report's own classes (--cub)
    minutes: float = 0.0


@dataclass
class TaskResult:
    """One task in REPORT.md: ours over the seeds (stats and the first run's config), or why it has
    none, beside the 2020 report's table where it has one."""
    name: str
    title: str
    course_report: dict = None
    stats: dict = None
    config: dict = None
    missing: str = None  # why it was not trained (its weights are unavailable)


def summarise(name, title, runs, out, epochs, course_report=None):
    """The task's table and figures in OUT/<name>/: mean +- std over seeds, or the one run."""
    folder = out / name
    stats = results.mean_std(runs) if len(runs) > 1 else runs[0]
    histories = [run_history(folder / f"seed{seed}", epochs) for seed in range(len(runs))]
    results.plot_history(folder, histories, title)
    atomic_write(folder / "metrics.md", f"**{title}**, {over_seeds(len(runs))}\n\n{results.format_table(stats)}\n")
    return TaskResult(name, title, course_report, stats, read_config(folder / "seed0"))


def run_history(run, epochs):
    """history.csv of a finished run, a row of numbers per epoch; one error line where a reused run's
    is missing or damaged, not a traceback from the plot."""
    try:
        rows = results.read_history(run)
        if len(rows) == epochs and all(math.isfinite(float(row[field])) for row in rows
                                       for field in results.HISTORY_FIELDS):
            return rows
    except (OSError, ValueError, KeyError, TypeError):  # TypeError: a short row's missing fields are None
        pass
    raise UserError(f"{run / 'history.csv'} is missing or damaged: use --force to train that run again, "
                    "or another folder")


def machine(trained):
    """Where the runs trained: device and precision from a run's config, how many processes trained
    each run (every run's that differ), and the CPU count."""
    configs = [t.config for t in trained]
    config = configs[0] if configs else {}
    trained_by = ", ".join(sorted({results.trained_by(c) for c in configs})) or "?"
    return (f"device {config.get('device', '?')}, precision {config.get('precision', '?')}, "
            f"each run trained by {trained_by}, {os.cpu_count()} CPU cores ({platform.machine()})")


def epochs_line(how, task_epochs):
    """How long every task trained: the quick look's epochs, or each task's own (the 2020 report's)."""
    if how.epochs:
        return f"all tasks {how.epochs} (overridden for a quick look)"
    names = defaultdict(list)
    for name, epochs in task_epochs.items():
        names[epochs].append(name)
    return "the 2020 report’s (" + "; ".join(f"{epochs} for {', '.join(n)}" for epochs, n in names.items()) + ")"


def header_lines(how, task_epochs, trained):
    seeds = how.seeds
    lines = [
        REPORT_TITLE, "",
        f"Made by `python reproduce.py{''.join(' ' + a for a in how.command)}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {how.minutes:.1f} minutes, {machine(trained)}.", "",
        f"- Data: {how.data}; split {'/'.join(f'{r:g}' for r in how.ratios)} into "
        f"{how.sizes['train']} / {how.sizes['validation']} / {how.sizes['test']} train / validation / test images"
        f"{(', a new split per seed' if how.resplit else ', one split for all seeds') if seeds > 1 else ''}.",
        f"- Every number is {over_seeds(seeds)}"
        + (f" (seeds vary initialisation and batch order{', and the split' if how.resplit else ''})."
           if seeds > 1 else "; `--seeds N` gives mean ± std over N seeds."),
        f"- Epochs: {epochs_line(how, task_epochs)}.",
        "- Augmentation: " + ("random resized crops (35-100 % of the area) and horizontal flips of the training images "
                              "(task 1: features of 10 augmented views per image); evaluation unaugmented."
                              if how.augment else "none, as in the 2020 report (`--augment` adds it)."),
    ]
    if not how.course_data:
        lines.append("- The 2020 report's numbers come from 7 CUB-200-2011 bird classes (417 images, test 84), ours "
                     "from other data: compare rankings and gaps, not digits. `--cub` runs on the report's own classes.")
    return lines


def mean_of(value):
    """A (mean, std) pair's mean, or the one run's number."""
    return value[0] if isinstance(value, tuple) else value


def summary_lines(task_results):
    lines = ["## Summary, ranked by test top-1", "",
             "| model | test top-1 | test top-3 | test logloss | trainable parameters | 2020 report's test top-1 |",
             "|---|---:|---:|---:|---:|---:|"]
    trained = [t for t in task_results if t.stats is not None]
    for t in sorted(trained, key=lambda t: mean_of(t.stats["test"]["top1"]), reverse=True):
        test = t.stats["test"]
        lines.append(f"| {t.title} | {results.format_cell(test['top1'], 2, ' %')} | "
                     f"{results.format_cell(test['top3'], 2, ' %')} | {results.format_cell(test['loss'], 4)} | "
                     f"{t.config['parameters']['trainable']:,} | {course_top1(t)} |")
    for t in (t for t in task_results if t.missing):
        lines.append(f"| {t.title} | weights unavailable | | | | {course_top1(t)} |")
    return lines


def course_top1(task_result):
    return f"{task_result.course_report['test']['top1']:.2f} %" if task_result.course_report else "–"


def task_lines(t, seeds):
    lines = [f"## {t.name}: {t.title}", ""]
    if t.missing:
        lines += [f"**Weights unavailable**, not trained: {t.missing}", ""]
    else:
        lines += [f"Ours, {over_seeds(seeds)}:", "", results.format_table(t.stats), "",
                  f"![logloss]({t.name}/loss.png) ![accuracy]({t.name}/accuracy.png)", ""]
    if t.course_report:
        lines += ["The 2020 report's (one run, CUB birds):", "", results.format_table(t.course_report), ""]
    if not t.missing:
        lines.append(f"Runs: `{t.name}/seed*/` (tables, history, confusion matrices, config, log).")
    return lines


def write_report(out, how, task_results, task_epochs):
    """REPORT.md in `out`: `how` it was made, then each task's results (TaskResult, in order);
    `task_epochs` maps every task asked for to its own epochs."""
    trained = [t for t in task_results if t.stats is not None]
    lines = header_lines(how, task_epochs, trained) + [""] + summary_lines(task_results)
    for t in task_results:
        lines += [""] + task_lines(t, how.seeds)
    lines += ["", "Where this project departs from the 2020 report, and why: see the README, "
                  "section *Deviations from the report*.", ""]
    atomic_write(out / "REPORT.md", "\n".join(lines))
