"""One model's section of REPORT.md: its table over the runs and curves, then what its pooled test
predictions show (per-class precision, recall and F1 with their counts, the confusion matrix as
counts and the most confused pairs, its calibration, its most confident mistakes), any plain-words
flag, the 2020 report's table where the report has one, its layers (architecture.md) and the
pictures its task draws into a run folder (task 3's cluster maps)."""
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common import results, scores
from common.data import decode_images, decoded_cache
from common.errors import UserError, warn
from common.evidence import Evidence, plot_reliability, plot_top_losses, read_evidence
from common.files import atomic_write
from common.gradcam import grad_cam
from common.results import markdown_code, markdown_text
from common.reuse import read_config

MAX_TABLE_CLASSES = 15  # a confusion matrix with more classes is in confusion.csv, not as a Markdown table
MAX_ARCHITECTURE_LINES = 200  # of a run's architecture.md table shown in REPORT.md
RUN_PICTURES = {"cluster_maps.png": "NetVLAD's soft assignment over the descriptor grid"}  # shown from the first run
# what summarise writes into OUT/<task>/ beside the run folders
TASK_FILES = ("loss.png", "accuracy.png", "metrics.md", "confusion.png", "confusion.csv", "reliability.png",
              "top_losses.png")


@dataclass
class TaskResult:
    """One model in REPORT.md: ours over the runs (stats and the first run's config), or why it has
    none, beside the 2020 report's table where it has one."""
    name: str
    title: str
    course_report: dict = None
    stats: dict = None
    config: dict = None
    missing: str = None  # why it was not trained (its weights are unavailable)
    evidence: Evidence = None  # every run's test predictions, where every run wrote them
    no_evidence: str = None  # why it has no evidence: a run's test predictions are missing or damaged
    runs: list = field(default_factory=list)  # its run folders, in read_evidence's order
    course_setting: str = None  # the report's own options where our runs differ (Task.course_setting)
    flags: list = field(default_factory=list)  # plain words on what it did not learn (report.model_flags)
    pictures: list = field(default_factory=list)  # (what it shows, its path from REPORT.md): RUN_PICTURES of the first run
    explained: bool = False  # its confident mistakes carry Grad-CAM heat maps


def summarise(name, title, runs, metrics, out, how, epochs, course_report=None, course_setting=None, explain=None):
    """The task's table and figures in OUT/<name>/ from its run folders `runs` and their `metrics`:
    mean ± std over the runs (how.over_runs), or the one run. explain(a run folder): that run's model
    from images to class scores, for Grad-CAM over its mistakes (common/saved_run.image_model_of)."""
    folder = out / name
    stats = results.mean_std(metrics) if len(metrics) > 1 else metrics[0]
    results.plot_history(folder, [run_history(run, epochs) for run in runs], title)
    atomic_write(folder / "metrics.md", f"**{markdown_text(title)}**, {how.over_runs}\n\n{results.format_table(stats)}\n")
    evidence, why, explained = task_evidence(folder, runs, title, how, explain)
    pictures = [(what, (runs[0] / file).relative_to(out).as_posix()) for file, what in RUN_PICTURES.items()
                if (runs[0] / file).is_file() and (runs[0] / file).is_relative_to(out)]
    return TaskResult(name, title, course_report, stats, read_config(runs[0]), evidence=evidence, no_evidence=why,
                      runs=list(runs), course_setting=course_setting, pictures=pictures, explained=explained)


def task_evidence(folder, runs, title, how, explain=None):
    """(the task's Evidence, None, whether its mistakes carry Grad-CAM), with its figures and pooled
    confusion.csv written: the test confusion matrix summed over runs, its calibration and its most
    confident mistakes (with Grad-CAM where `explain` loads the runs' models). (None, why, False)
    where a run lacks its test predictions (said in one line) or they are damaged or edited since the
    run wrote them (one warning): nothing of them enters the report."""
    try:
        found = read_evidence(runs, how.folds)
    except (OSError, ValueError) as e:
        line = f"{folder.name}: no intervals, per-class scores or mistakes ({e}); --force trains its runs again"
        (print if isinstance(e, OSError) else warn)(line)  # missing: a run from before runs wrote them
        return None, str(e), False
    counts = found.confusion()
    results.plot_confusion(folder / "confusion.png", counts, found.classes, f"{title}: test confusion matrix, {pooled_over(how)}")
    results.write_confusion_csv(folder / "confusion.csv", counts, found.classes)
    plot_reliability(folder / "reliability.png", *found.calibration(), f"{title}: calibration, {pooled_over(how)}")
    mistakes = found.top_losses()
    explained = explained_mistakes(mistakes, runs, found.classes, explain) if explain else None
    plot_top_losses(folder / "top_losses.png", mistakes, f"{title}: the test images it gets wrong most confidently",
                    explained)
    return found, None, explained is not None and any(isinstance(heat, tuple) for heat in explained)


def explained_mistakes(mistakes, runs, classes, explain):
    """Per mistake, (the crop its run saw, Grad-CAM of the class predicted, by that run's model), or
    why its image is not shown: gone, or changed since (its sha1 is not the one the run tested, said
    in one warning). None, drawn plain, for all, said in one warning, where a run's model cannot be rebuilt. Each
    run's model is loaded once, for all of its mistakes, and one is held at a time."""
    explained = ["image not found"] * len(mistakes)
    present = [i for i, m in enumerate(mistakes) if Path(m.path).is_file()]
    crops, kept, digests = decode_images([mistakes[i].path for i in present], decoded_cache(), desc="Grad-CAM")
    by_run, changed = {}, []
    for row, (index, digest) in enumerate(zip((present[k] for k in kept), digests)):
        if digest != mistakes[index].sha1:
            explained[index] = "image changed since the run"
            changed.append(mistakes[index].path)
        else:
            explained[index] = None  # until its heat map is drawn
            by_run.setdefault(mistakes[index].run, []).append((row, index))
    if changed:
        warn(f"{len(changed)} test images changed since their runs tested them (e.g. {changed[0]}): "
             "drawn without them")
    try:
        for run, rows in by_run.items():
            model = explain(runs[run])
            for row, index in rows:
                crop, predicted = crops[row:row + 1], classes.index(mistakes[index].predicted)
                explained[index] = (crop[0], grad_cam(model, crop, torch.tensor([predicted]))[0])
    except (UserError, OSError, RuntimeError, ValueError) as e:  # weights moved or edited since: no heat maps
        warn(f"{runs[run]}: no Grad-CAM of its mistakes ({e})")
        return [None if isinstance(why, tuple) else why for why in explained]
    return explained


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


def percent(value):
    return "n/a" if math.isnan(value) else f"{value:.1f} %"


def per_class_lines(found, how):
    """A row per class: its test images (distinct, and counted once per run), precision, recall and F1."""
    runs = "image-repetitions" if how.folds > 1 else "image-seeds"
    lines = [f"Per class ({pooled_over(how)}); recall is the class's accuracy, n/a where a class was never "
             "predicted (precision) or never true:", "",
             f"| class | test images | {runs} | precision | recall | F1 |", "|---|---:|---:|---:|---:|---:|"]
    for name, (images, counted, precision, recall, f1) in zip(found.classes, found.per_class()):
        lines.append(f"| {markdown_text(name)} | {images} | {counted} | {percent(precision)} | {percent(recall)} | "
                     f"{percent(f1)} |")
    return lines


def confusion_lines(t, how):
    """The pooled confusion matrix as counts (up to MAX_TABLE_CLASSES classes), then the most confused pairs."""
    found, counts = t.evidence, t.evidence.confusion().numpy()
    names = [markdown_text(c) for c in found.classes]
    if len(names) <= MAX_TABLE_CLASSES:
        lines = [f"Test confusion matrix ({pooled_over(how)}), a row per true class, a column per predicted class:", "",
                 "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {name} | " + " | ".join(str(n) for n in row) + " |" for name, row in zip(names, counts)]
    else:
        lines = [f"Test confusion matrix: {len(names)} classes, as counts in `{t.name}/confusion.csv`."]
    pairs = scores.confused_pairs(counts)
    described = ", ".join(f"{names[true]} as {names[predicted]} ({n})" for true, predicted, n in pairs)
    return lines + ["", f"Most confused (true as predicted, images): {described or 'none'}."]


def evidence_lines(t, how):
    """Per-class scores, the confusion matrix, the calibration and the confident mistakes."""
    return [*per_class_lines(t.evidence, how), "", *confusion_lines(t, how), "",
            f"![confusion matrix]({t.name}/confusion.png) ![reliability diagram]({t.name}/reliability.png) "
            f"![most confident mistakes]({t.name}/top_losses.png)", "", *explained_lines(t)]


def explained_lines(t):
    if not t.explained:
        return []
    return ["Over each mistake, Grad-CAM (Selvaraju et al., 2017) of the run that made it: red is where that model, "
            "at its last convolutional layer, found the evidence for the class it predicted. "
            "`python predict.py RUN_DIR IMAGES --explain --pictures DIR` draws the same for any image.", ""]


def architecture_lines(t):
    """The first run's layer table (architecture.md; a task's runs share their layers), where it has one."""
    path = t.runs[0] / "architecture.md" if t.runs else None
    if path is None or not path.is_file():
        return []
    with open(path, encoding="utf-8", errors="replace") as file:  # bounded: a reused run folder may hold anything
        table = [line for line in file.read(200 * MAX_ARCHITECTURE_LINES).splitlines() if line.startswith("|")]
    table = table[:MAX_ARCHITECTURE_LINES]
    return ["Its layers, output shapes and parameters (every run's `architecture.md`):", "", *table, ""] if table else []


def task_lines(t, how):
    lines = [f"## {t.name}: {markdown_text(t.title)}", ""]
    if t.flags:
        lines += [f"**Warning:** {' '.join(t.flags)}", ""]
    if t.missing:
        lines += [f"**Weights unavailable**, not trained: {markdown_text(t.missing)}", ""]
    else:
        lines += [f"Ours, {how.over_runs}:", "", results.format_table(t.stats), "",
                  f"![logloss]({t.name}/loss.png) ![accuracy]({t.name}/accuracy.png)", ""]
    if t.evidence is not None:
        lines += evidence_lines(t, how)
    if t.no_evidence:
        lines += [f"No intervals, comparisons, per-class scores or mistakes: {markdown_text(t.no_evidence)}", ""]
    if t.course_report:
        setting = f", with {markdown_code(t.course_setting)}: not our configuration" if t.course_setting else ""
        lines += [f"The 2020 report's (one run, CUB birds{setting}):", "", results.format_table(t.course_report), ""]
    if not t.missing:
        lines += [*(f"![{what}]({path})" for what, path in t.pictures), *([""] if t.pictures else [])]
        lines += architecture_lines(t)
        runs = "rep*/fold*" if how.folds > 1 else "seed*"
        lines.append(f"Runs: `{t.name}/{runs}/` (tables, history, test predictions, confusion matrices, config, log).")
    return lines
