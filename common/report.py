"""REPORT.md: what reproduce.py writes once every run is done, a table and figures per task over
its runs (folds, or seeds on one split), a summary ranked by test top-1, and the 2020 course report's own numbers beside ours."""
import math
import os
import platform
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from common import results, stats
from common.errors import UserError, warn
from common.evidence import Evidence, plot_summary, plot_top_losses, read_evidence
from common.files import atomic_write
from common.results import markdown_code, markdown_text
from common.reuse import read_config

REPORT_TITLE = "# Reproduction: small-data image classification (CS 6910 Assignment 3 report, 2020)"


def over_runs(folds, seeds):
    """What a table's mean ± std is taken over: the folds of the repetitions, or the seeds on one split."""
    if folds > 1:
        repeated = f" of {seeds} repetitions ({folds * seeds} runs)" if seeds > 1 else ""
        return f"mean ± sample std over the {folds} folds{repeated}"
    return f"mean ± sample std over {seeds} seeds" if seeds > 1 else "one run (seed 0)"


@dataclass(frozen=True)
class Reproduction:
    """How REPORT.md was made, as its header says."""
    command: list        # reproduce.py's arguments
    data: str            # what was split
    ratios: tuple        # train, validation, test
    sizes: dict          # split -> images (the first run's split)
    seeds: int           # runs per task on one split, or repetitions of the folds
    resplit: bool        # a new split per seed
    epochs: int = None   # every task's, for a quick look; None: each task's own
    augment: bool = False
    course_data: bool = False  # the 2020 report's own classes (--cub)
    minutes: float = 0.0
    folds: int = 1       # K-fold cross-validation; 1: one split

    @property
    def over_runs(self):
        return over_runs(self.folds, self.seeds)


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
    evidence: Evidence = None  # every seed's test predictions, where every run wrote them
    no_evidence: str = None  # why it has no evidence: a run's test predictions are missing or damaged


def summarise(name, title, runs, metrics, out, how, epochs, course_report=None):
    """The task's table and figures in OUT/<name>/ from its run folders `runs` and their `metrics`:
    mean ± std over the runs (how.over_runs), or the one run."""
    folder = out / name
    stats = results.mean_std(metrics) if len(metrics) > 1 else metrics[0]
    results.plot_history(folder, [run_history(run, epochs) for run in runs], title)
    atomic_write(folder / "metrics.md", f"**{markdown_text(title)}**, {how.over_runs}\n\n{results.format_table(stats)}\n")
    evidence, why = task_evidence(folder, runs, title, how)
    return TaskResult(name, title, course_report, stats, read_config(runs[0]), evidence=evidence, no_evidence=why)


def task_evidence(folder, runs, title, how):
    """(the task's Evidence, None), with its figures written: the test confusion matrix summed over
    runs and its most confident mistakes. (None, why) where a run lacks its test predictions (said in
    one line) or they are damaged or edited since the run wrote them (one warning): nothing of them
    enters the report."""
    try:
        found = read_evidence(runs, how.folds)
    except (OSError, ValueError) as e:
        line = f"{folder.name}: no intervals, per-class accuracy or mistakes ({e}); --force trains its runs again"
        (print if isinstance(e, OSError) else warn)(line)  # missing: a run from before runs wrote them
        return None, str(e)
    results.plot_confusion(folder / "confusion.png", found.confusion(), found.classes,
                           f"{title}: test confusion matrix, {pooled_over(how)}")
    plot_top_losses(folder / "top_losses.png", found.top_losses(), f"{title}: the test images it gets wrong most confidently")
    return found, None


def pooled_over(how):
    """What a task's pooled test predictions are: every fold's, or every seed's."""
    if how.folds > 1:
        return "all folds pooled, every image once" + (f" in each of {how.seeds} repetitions" if how.seeds > 1 else "")
    return f"{how.seeds} seeds pooled" if how.seeds > 1 else "one run (seed 0)"


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


def data_lines(how):
    """How the data were used: K-fold cross-validation, or one split (per seed with --resplit)."""
    sizes = f"{how.sizes['train']} / {how.sizes['validation']} / {how.sizes['test']} train / validation / test images"
    if how.folds > 1:
        repeated = (f"repeated {how.seeds} times, each repetition's folds drawn by its seed" if how.seeds > 1 else
                    "one repetition (`--seeds N` repeats it N times, the folds drawn anew each time)")
        return [f"- Data: {markdown_text(how.data)}, split into {how.folds} stratified folds, {repeated}. Run i tests "
                f"on fold i and trains and validates on the others ({sizes} in fold 0), so every image is a test image "
                "once per repetition; the test predictions of all folds are pooled.",
                f"- Every table is {how.over_runs}; the runs vary in their data and their seed "
                "(initialisation and batch order)."]
    per_seed = (', a new split per seed' if how.resplit else ', one split for all seeds') if how.seeds > 1 else ''
    return [f"- Data: {markdown_text(how.data)}; one split {'/'.join(f'{r:g}' for r in how.ratios)} into {sizes}"
            f"{per_seed} (`--folds K` cross-validates instead).",
            f"- Every number is {how.over_runs}"
            + (f" (seeds vary initialisation and batch order{', and the split' if how.resplit else ''})."
               if how.seeds > 1 else "; `--seeds N` gives mean ± std over N seeds.")]


def header_lines(how, task_epochs, trained):
    lines = [
        REPORT_TITLE, "",
        f"Made by {markdown_code('python reproduce.py' + ''.join(' ' + a for a in how.command))} on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {how.minutes:.1f} minutes, {machine(trained)}.", "",
        *data_lines(how),
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


def with_interval(t, metric, k):
    """The table's cell: mean ± std over the runs (or the one run), then the 95 % interval."""
    cell = results.format_cell(t.stats["test"][metric], 2, " %")
    if t.evidence is None:
        return cell
    _, low, high = t.evidence.interval(k)
    return f"{cell} [{low:.1f}, {high:.1f}]"


def interval_kind(how):
    if how.folds > 1:
        return "the 95 % interval of the corrected repeated k-fold t-test, over folds and repetitions"
    return "the 95 % bootstrap interval over test images and seeds"


def summary_lines(task_results, how):
    lines = ["## Summary, ranked by test top-1", "",
             f"Test top-1 and top-3: {how.over_runs}, then [{interval_kind(how)}] (how: docs/statistics.md).", "",
             "| model | test top-1 | test top-3 | test logloss | trainable parameters | 2020 report's test top-1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for t in ranked(task_results):
        lines.append(f"| {markdown_text(t.title)} | {with_interval(t, 'top1', 1)} | {with_interval(t, 'top3', 3)} | "
                     f"{results.format_cell(t.stats['test']['loss'], 4)} | "
                     f"{t.config['parameters']['trainable']:,} | {course_top1(t)} |")
    for t in (t for t in task_results if t.missing):
        lines.append(f"| {markdown_text(t.title)} | weights unavailable | | | | {course_top1(t)} |")
    return lines


def ranked(task_results):
    trained = [t for t in task_results if t.stats is not None]
    return sorted(trained, key=lambda t: mean_of(t.stats["test"]["top1"]), reverse=True)


def comparison_lines(task_results, how):
    """Every pair of models, the better first, paired on the same test images and runs, in plain words."""
    with_evidence = [t for t in ranked(task_results) if t.evidence is not None]
    pairs = [(a, b) for i, a in enumerate(with_evidence) for b in with_evidence[i + 1:]
             if a.evidence.tested_like(b.evidence)]
    if not pairs:
        return []
    rows = ["| better | worse | difference (points) | 95 % interval | p | the data |", "|---|---|---:|---:|---:|---|"]
    lines = []
    for a, b in pairs:
        difference, low, high, p = a.evidence.compare(b.evidence)
        supported = stats.supported(low, high, p)
        a_title, b_title = markdown_text(a.title), markdown_text(b.title)
        rows.append(f"| {a_title} | {b_title} | {difference:+.1f} | [{low:.1f}, {high:.1f}] | {p:.3g} | "
                    f"{'support a difference' if supported else 'do not support a difference'} |")
        lines.append(f"- {a_title} against {b_title}: {difference:+.1f} points, 95 % interval "
                     f"[{low:.1f}, {high:.1f}], p = {p:.3g}: " +
                     ("the data support this difference." if supported else
                      "the data do not support a difference (it is within what chance gives)."))
    return ["## Which differences the data support", "", comparison_method(how), "", *rows, "", *lines]


def comparison_method(how):
    if how.folds > 1:
        return ("Every pair of models, on the same folds: the difference in test top-1 (the mean over folds of each "
                "fold's difference), its 95 % interval and the p-value of the corrected repeated k-fold t-test, "
                "which widens the variance for the folds' overlapping training sets. A difference is supported "
                "where p < 0.05.")
    return ("Every pair of models, on the same test images and seeds: the difference in test top-1, its 95 % paired "
            "bootstrap interval, and the p-value of an exact paired permutation test (with one seed, the exact "
            "McNemar test). A difference is supported where p < 0.05 and its interval excludes 0.")


def course_top1(task_result):
    return f"{task_result.course_report['test']['top1']:.2f} %" if task_result.course_report else "–"


def evidence_lines(t, how):
    """Per-class test accuracy, the pooled confusion matrix, and the confident mistakes."""
    found = t.evidence
    names = " | ".join(map(markdown_text, found.classes))
    cells = " | ".join(f"{a:.1f} %" for a in found.per_class())
    return [f"Test accuracy per class ({pooled_over(how)}):", "",
            f"| {names} |", "|" + "---:|" * len(found.classes), f"| {cells} |", "",
            f"![confusion matrix]({t.name}/confusion.png) ![most confident mistakes]({t.name}/top_losses.png)", ""]


def task_lines(t, how):
    lines = [f"## {t.name}: {markdown_text(t.title)}", ""]
    if t.missing:
        lines += [f"**Weights unavailable**, not trained: {markdown_text(t.missing)}", ""]
    else:
        lines += [f"Ours, {how.over_runs}:", "", results.format_table(t.stats), "",
                  f"![logloss]({t.name}/loss.png) ![accuracy]({t.name}/accuracy.png)", ""]
    if t.evidence is not None:
        lines += evidence_lines(t, how)
    if t.no_evidence:
        lines += [f"No intervals, comparisons, per-class accuracy or mistakes: {markdown_text(t.no_evidence)}", ""]
    if t.course_report:
        lines += ["The 2020 report's (one run, CUB birds):", "", results.format_table(t.course_report), ""]
    if not t.missing:
        runs = "rep*/fold*" if how.folds > 1 else "seed*"
        lines.append(f"Runs: `{t.name}/{runs}/` (tables, history, test predictions, confusion matrices, config, log).")
    return lines


def write_summary_figure(out, task_results, how):
    """summary.png: every model's test top-1 with its interval; False where no task has its predictions."""
    rows = [(t.title, *t.evidence.interval(), t.course_report["test"]["top1"] if t.course_report else None)
            for t in ranked(task_results) if t.evidence is not None]
    if rows:
        plot_summary(out / "summary.png", rows, "folds and repetitions" if how.folds > 1 else "test images and seeds")
    return bool(rows)


def write_report(out, how, task_results, task_epochs):
    """REPORT.md in `out`: `how` it was made, then each task's results (TaskResult, in order);
    `task_epochs` maps every task asked for to its own epochs."""
    trained = [t for t in task_results if t.stats is not None]
    lines = header_lines(how, task_epochs, trained) + [""]
    if write_summary_figure(out, task_results, how):
        lines += ["![test top-1 per model, with 95 % intervals](summary.png)", ""]
    lines += summary_lines(task_results, how)
    comparisons = comparison_lines(task_results, how)
    lines += [""] + comparisons if comparisons else []
    for t in task_results:
        lines += [""] + task_lines(t, how)
    lines += ["", "Where this project departs from the 2020 report, and why: the repository's "
                  "docs/deviations.md.", ""]
    atomic_write(out / "REPORT.md", "\n".join(lines))
