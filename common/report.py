"""REPORT.md: what reproduce.py writes once every run is done, a table and figures per task over
its seeds, a summary ranked by test top-1, and the report's own numbers beside ours."""
import math
import os
import platform
from datetime import datetime, timezone

from common import results
from common.cli import UserError
from common.run_folder import read_config

REPORT_TITLE = "# Reproduction: small-data image classification (CS 6910 Assignment 3 report, 2020)"


def over_seeds(n):
    return f"mean ± sample std over {n} seeds" if n > 1 else "one run (seed 0)"


def summarise(task, runs, out, epochs):
    """The task's table and figures in OUT/<task>/: mean +- std over seeds, or the one run."""
    folder = out / task.name
    stats = results.mean_std(runs) if len(runs) > 1 else runs[0]
    histories = [run_history(folder / f"seed{seed}", epochs) for seed in range(len(runs))]
    results.plot_history(folder, histories, task.title)
    results.atomic_write(folder / "metrics.md", f"**{task.title}**, {over_seeds(len(runs))}\n\n"
                                                f"{results.format_table(stats)}\n")
    return {"stats": stats, "config": read_config(folder / "seed0")}


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


def machine(summaries):
    """Where the runs trained: device and precision from a run's config, how many processes trained
    each run (every run's that differ), and the CPU count."""
    configs = [s["config"] for s in summaries.values()]
    config = configs[0] if configs else {}
    trained_by = ", ".join(sorted({results.trained_by(c) for c in configs})) or "?"
    return (f"device {config.get('device', '?')}, precision {config.get('precision', '?')}, "
            f"each run trained by {trained_by}, {os.cpu_count()} CPU cores ({platform.machine()})")


def header_lines(args, ratios, description, seconds, sizes, summaries):
    lines = [
        REPORT_TITLE, "",
        f"Made by `python reproduce.py{''.join(' ' + a for a in args.command)}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} minutes, {machine(summaries)}.", "",
        f"- Data: {description}; split {'/'.join(f'{r:g}' for r in ratios)} into "
        f"{sizes['train']} / {sizes['validation']} / {sizes['test']} train / validation / test images"
        f"{(', a new split per seed' if args.resplit else ', one split for all seeds') if args.seeds > 1 else ''}.",
        f"- Every number is {over_seeds(args.seeds)}"
        + (f" (seeds vary initialisation and batch order{', and the split' if args.resplit else ''})."
           if args.seeds > 1 else "; `--seeds N` gives mean ± std over N seeds."),
        f"- Epochs: {f'all tasks {args.epochs} (overridden for a quick look)' if args.epochs else 'the report’s (20 for task 1, 100 for tasks 2 and 3)'}.",
        "- Augmentation: " + ("random resized crops (35-100 % of the area) and horizontal flips of the training images "
                              "(task 1: features of 10 augmented views per image); evaluation unaugmented."
                              if args.augment else "none, as in the report (`--augment` adds it)."),
    ]
    if not args.cub:
        lines.append("- The report's numbers come from 7 CUB-200-2011 bird classes (417 images, test 84), ours from "
                     "other data: compare rankings and gaps, not digits. `--cub` runs on the report's own classes.")
    return lines


def mean_of(value):
    """A (mean, std) pair's mean, or the one run's number."""
    return value[0] if isinstance(value, tuple) else value


def summary_lines(summaries, missing):
    lines = ["## Summary, ranked by test top-1", "",
             "| model | test top-1 | test top-3 | test logloss | trainable parameters | report's test top-1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for task, s in sorted(summaries.items(), key=lambda item: mean_of(item[1]["stats"]["test"]["top1"]), reverse=True):
        test = s["stats"]["test"]
        reported = f"{task.report['test']['top1']:.2f} %" if task.report else "–"
        lines.append(f"| {task.title} | {results.format_cell(test['top1'], 2, ' %')} | "
                     f"{results.format_cell(test['top3'], 2, ' %')} | {results.format_cell(test['loss'], 4)} | "
                     f"{s['config']['parameters']['trainable']:,} | {reported} |")
    for task in missing:
        lines.append(f"| {task.title} | weights unavailable | | | | {task.report['test']['top1']:.2f} % |")
    return lines


def task_lines(task, summary, missing_reason, seeds):
    lines = [f"## {task.name}: {task.title}", ""]
    if missing_reason:
        lines += [f"**Weights unavailable**, not trained: {missing_reason}", ""]
    else:
        lines += [f"Ours, {over_seeds(seeds)}:", "", results.format_table(summary["stats"]), "",
                  f"![logloss]({task.name}/loss.png) ![accuracy]({task.name}/accuracy.png)", ""]
    if task.report:
        lines += ["The report's (one run, CUB birds):", "", results.format_table(task.report), ""]
    if summary:
        lines.append(f"Runs: `{task.name}/seed*/` (tables, history, confusion matrices, config, log).")
    return lines


def write_report(args, tasks, summaries, missing, ratios, description, seconds, sizes):
    lines = header_lines(args, ratios, description, seconds, sizes, summaries) + [""] + summary_lines(summaries, missing)
    for task in (t for t in tasks if t in summaries or t in missing):
        lines += [""] + task_lines(task, summaries.get(task), missing.get(task), args.seeds)
    lines += ["", "Where this project departs from the report, and why: see the README, "
                  "section *Deviations from the report*.", ""]
    results.atomic_write(args.out / "REPORT.md", "\n".join(lines))
