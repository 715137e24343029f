"""REPORT.md: what reproduce.py writes once every run is done. A header on how it was made, a summary
ranked by test top-1 beside the majority-class baseline and the 2020 course report's own numbers,
the scores beyond accuracy, every pairwise comparison, then a section per model (common/report_task.py)."""
import math
import os
import platform
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from common import results, scores, stats
from common.evidence import SCORES, majority_baseline, plot_summary
from common.files import atomic_write
from common.report_task import TaskResult, task_lines
from common.results import markdown_code, markdown_text

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


def own_splits(how):
    """Whether each seed drew its own split (--resplit): every seed's test images are others."""
    return how.folds == 1 and how.resplit and how.seeds > 1


def interval_kind(how):
    if how.folds > 1:
        return "the 95 % interval of the corrected repeated k-fold t-test, over folds and repetitions"
    if own_splits(how):
        return "the 95 % interval of the corrected resampled t-test, over the seeds' splits"
    return "the 95 % bootstrap interval over test images and seeds"


def summary_lines(task_results, how, baseline=None):
    lines = ["## Summary, ranked by test top-1", "",
             f"Test top-1 and top-3: {how.over_runs}, then [{interval_kind(how)}] (how: docs/statistics.md).", "",
             "| model | test top-1 | test top-3 | test logloss | trainable parameters | 2020 report's test top-1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for t in ranked(task_results + ([baseline] if baseline else [])):
        lines.append(f"| {markdown_text(t.title)} | {with_interval(t, 'top1', 1)} | {with_interval(t, 'top3', 3)} | "
                     f"{results.format_cell(t.stats['test']['loss'], 4)} | "
                     f"{t.config['parameters']['trainable']:,} | {course_top1(t)} |")
    for t in (t for t in task_results if t.missing):
        lines.append(f"| {markdown_text(t.title)} | weights unavailable | | | | {course_top1(t)} |")
    apart = [t for t in task_results if t.course_report and t.course_setting]
    lines += [""] * bool(apart) + [f"The 2020 report's {markdown_text(t.title.split(' (')[0])} "
                                   f"({markdown_code(t.course_setting)}, a configuration no row here has): "
                                   f"{t.course_report['test']['top1']:.2f} % test top-1." for t in apart]
    flagged = [t for t in ranked(task_results) if t.flags]
    lines += [""] * bool(flagged) + [f"- **Warning, {markdown_text(t.title)}:** {' '.join(t.flags)}" for t in flagged]
    return lines


def ranked(task_results):
    trained = [t for t in task_results if t.stats is not None]
    return sorted(trained, key=lambda t: mean_of(t.stats["test"]["top1"]), reverse=True)


def course_top1(task_result):
    reported = course_top1_value(task_result)
    return "–" if reported is None else f"{reported:.2f} %"


def score_lines(task_results, baseline, how):
    """Balanced accuracy, macro-F1, Cohen's kappa and ECE per model with their intervals, and its mean confidence."""
    models = [t for t in ranked(task_results + ([baseline] if baseline else [])) if t.evidence is not None]
    if not models:
        return []
    lines = ["## What each model learned", "",
             "Scores that a model answering one class cannot fake, and how well its confidence matches its accuracy "
             f"(expected calibration error, {scores.CALIBRATION_BINS} bins), each {score_over(how)}, then "
             f"[{interval_kind(how)}]. Chance is a balanced accuracy of 1 / classes and a kappa of 0. n/a: undefined "
             "(kappa needs two classes; a fold where a score is undefined is left out of its mean). "
             "How: docs/statistics.md.", "",
             "| model | balanced accuracy | macro-F1 | Cohen's kappa | ECE | mean confidence | test top-1 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for t in models:
        cells = [score_cell(t.evidence.score(name), "" if name == "Cohen's kappa" else " %") for name in SCORES]
        confidence = 100 * t.evidence.probabilities.max(axis=2).mean()
        lines.append(f"| {markdown_text(t.title)} | {' | '.join(cells)} | {confidence:.1f} % | "
                     f"{100 * t.evidence.correct().mean():.1f} % |")
    return lines


def score_over(how):
    if how.folds > 1:
        return "the mean of the folds' scores"
    return "the mean of the seeds' scores" if how.seeds > 1 else "one run's"


def score_cell(interval, unit):
    """value [low, high]: a kappa with 2 decimals, a percentage with 1; n/a where undefined."""
    value, low, high = interval
    if math.isnan(value):
        return "n/a"
    digits = 1 if unit else 2
    bounds = "" if math.isnan(low) else f" [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{value:.{digits}f}{unit}{bounds}"


@dataclass(frozen=True)
class Comparison:
    """Two models' test top-1 on the same images and runs: better minus worse, and Holm's adjusted p."""
    better: TaskResult
    worse: TaskResult
    difference: float
    low: float
    high: float
    p: float
    adjusted_p: float = math.nan

    @property
    def supported(self):
        return stats.supported(self.low, self.high, self.adjusted_p)


def compare_all(models):
    """Every pair of `models` (TaskResults with evidence, best first) tested on the same images and
    runs, with Holm's adjustment over them all: one family."""
    pairs = [(a, b, *a.evidence.compare(b.evidence)) for i, a in enumerate(models) for b in models[i + 1:]
             if a.evidence.tested_like(b.evidence)]
    adjusted = scores.holm([pair[-1] for pair in pairs])
    return [Comparison(*pair, adjusted_p=float(q)) for pair, q in zip(pairs, adjusted)]


def comparison_lines(comparisons, how):
    """The table of every pair, the better first, in plain words."""
    if not comparisons:
        return []
    rows = ["| better | worse | difference (points) | 95 % interval | p | Holm p | the data |",
            "|---|---|---:|---:|---:|---:|---|"]
    for c in comparisons:
        rows.append(f"| {markdown_text(c.better.title)} | {markdown_text(c.worse.title)} | {c.difference:+.1f} | "
                    f"[{c.low:.1f}, {c.high:.1f}] | {p_cell(c.p)} | {p_cell(c.adjusted_p)} | "
                    f"{'supported' if c.supported else 'inconclusive'} |")
    return ["## Which differences the data support", "", comparison_method(how, len(comparisons)), "", *rows]


def p_cell(p):
    """A p-value to 3 digits; n/a where the test is undefined (no spread between folds)."""
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def comparison_method(how, pairs):
    if how.folds > 1 or own_splits(how):
        units = "folds" if how.folds > 1 else "seeds' splits"
        test = ("the corrected repeated k-fold t-test, which widens the variance for the folds' overlapping "
                "training sets" if how.folds > 1 else "the corrected resampled t-test over the seeds' splits (each "
                "seed drew its own test images, so no image is paired across seeds)")
        method = (f"Every pair of models, on the same {units}: the difference in test top-1 (the mean over {units} of "
                  f"each one's difference), its 95 % interval and the p-value of {test}.")
        given = f"p is two-sided and treats these {units} and their trained runs as a sample of such runs."
    else:
        method = ("Every pair of models, on the same test images and seeds: the difference in test top-1, its 95 % "
                  "paired bootstrap interval, and the p-value of an exact paired permutation test (with one seed, the "
                  "exact McNemar test).")
        given = ("p is two-sided and conditional on these trained runs: it resamples the test images, not new "
                 "training runs.")
    interval = " and its interval excludes 0" if how.folds == 1 and not own_splits(how) else ""
    return (f"{method} {given} Holm p adjusts p for the {pairs} comparison{'s' * (pairs != 1)} of this table "
            f"(Holm's step-down method). A difference is supported where Holm p < 0.05{interval}; otherwise it is inconclusive: "
            "the interval says how large a difference the data leave open, in either direction.")


def model_flags(t, baseline_comparisons):
    """Plain words on a model that mostly answers one class, agrees with the truth no better than
    chance (its kappa interval includes 0), or is not shown better than always answering the largest class."""
    found, flags = t.evidence, []
    top, share, true_share = found.most_predicted()
    if share > 50 and share >= 2 * true_share:
        flags.append(f"It predicts *{markdown_text(found.classes[top])}* for {share:.0f} % of test images, the true "
                     f"class of {true_share:.0f} % of them.")
    kappa, low, high = found.score("Cohen's kappa")
    if not math.isnan(kappa) and low <= 0:
        flags.append(f"Its Cohen's kappa, {kappa:.2f} [{low:.2f}, {high:.2f}], includes 0: its agreement with the true "
                     "classes is not shown to exceed chance.")
    against = next((c for c in baseline_comparisons if t in (c.better, c.worse)), None)
    if against is not None and not (against.supported and against.better is t):
        sign = 1 if against.better is t else -1
        low, high = sorted((sign * against.low, sign * against.high))
        flags.append(f"It is not shown better than always answering the largest class: {sign * against.difference:+.1f} "
                     f"points [{low:.1f}, {high:.1f}], Holm p = {p_cell(against.adjusted_p)}.")
    return flags


def baseline_result(task_results, how):
    """The majority-class baseline as a TaskResult on the runs of the first model with evidence, or
    None (said in one line where its training folders are gone)."""
    first = next((t for t in task_results if t.evidence is not None and t.runs), None)
    if first is None:
        return None
    try:
        found = majority_baseline(first.evidence, first.runs)
    except (OSError, ValueError) as e:
        print(f"no majority-class baseline: {e}")
        return None
    largest = {found.classes[c] for c in found.probabilities.argmax(axis=2).ravel()}
    named = f" ({', '.join(sorted(largest))})" if len(largest) <= 3 else ""
    metrics = found.run_metrics()
    return TaskResult("baseline", f"Always the largest training class{named}", evidence=found,
                      stats=results.mean_std(metrics) if len(metrics) > 1 else metrics[0],
                      config={"parameters": {"trainable": 0}})


def write_summary_figure(out, task_results, how, baseline=None):
    """summary.png: every model's test top-1 with its interval, and the baseline's as a line; False
    where no task has its predictions."""
    rows = [(t.title, *t.evidence.interval(), course_top1_value(t)) for t in ranked(task_results)
            if t.evidence is not None]
    if rows:
        over = "folds and repetitions" if how.folds > 1 else "seeds' splits" if own_splits(how) else "test images and seeds"
        plot_summary(out / "summary.png", rows, over,
                     baseline=(baseline.title, baseline.evidence.interval()[0]) if baseline else None)
    return bool(rows)


def course_top1_value(t):
    """The 2020 report's test top-1 where our runs have its configuration, else None."""
    return t.course_report["test"]["top1"] if t.course_report and not t.course_setting else None


def write_report(out, how, task_results, task_epochs):
    """REPORT.md in `out`: `how` it was made, then each task's results (TaskResult, in order);
    `task_epochs` maps every task asked for to its own epochs."""
    trained = [t for t in task_results if t.stats is not None]
    baseline = baseline_result(task_results, how)
    models = [t for t in ranked(task_results + ([baseline] if baseline else [])) if t.evidence is not None]
    comparisons = compare_all(models)
    for t in models:
        if t is not baseline:
            t.flags = model_flags(t, [c for c in comparisons if baseline in (c.better, c.worse)])
    lines = header_lines(how, task_epochs, trained) + [""]
    if write_summary_figure(out, task_results, how, baseline):
        lines += ["![test top-1 per model, with 95 % intervals](summary.png)", ""]
    lines += summary_lines(task_results, how, baseline)
    for section in (score_lines(task_results, baseline, how), comparison_lines(comparisons, how)):
        lines += [""] + section if section else []
    for t in task_results:
        lines += [""] + task_lines(t, how)
    lines += ["", "Where this project departs from the 2020 report, and why: the repository's "
                  "docs/deviations.md.", ""]
    atomic_write(out / "REPORT.md", "\n".join(lines))
