"""Reproduce the whole report: cross-validate every task, write results/reproduce/REPORT.md.

    python reproduce.py                      # the embedded demo data, 5-fold cross-validation
    python reproduce.py --data MY_IMAGES     # any folder with one sub-folder per class
    python reproduce.py --cub CUB_200_2011.tgz --seeds 3    # 3 repetitions of 5-fold CV
    python reproduce.py --folds 1 --seeds 3  # one train/validation/test split, 3 seeds

By default the data are split into 5 stratified folds: run i tests on fold i and trains and validates
on the others (70 / 10 / 20 % train / validation / test), so every image is a test image once, and
REPORT.md pools the test predictions of all folds. --seeds N repeats that N times, the folds drawn
anew by each repetition's seed.

Finished runs are reused: run it again after an interruption, or with more --seeds, and only
what is missing is trained. --force trains everything again.

Runs are independent (task x fold x repetition): --jobs N trains N at a time, each on a GPU of its own, and
--print-commands prints every unfinished run's command line instead, for a cluster scheduler (a
Slurm job array, say) to run; reproduce.py then reuses them and writes the report.
"""
import argparse
import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

import tasks
from common.cli import UserError, run_main
from common.errors import shown
from common.cache import check_cache_outside
from common.config import MAX_SEEDS
from common.cub import CUB_CLASSES, cub_images
from common.data import MANIFEST, SPLITS, UNFINISHED_MANIFEST
from common.files import atomic_files
from common.manifest import manifest_rows
from common.options import command_line
from common.paths import DEMO_IMAGES, RESULTS, is_inside, task_script
from common.report import REPORT_TITLE, Reproduction, write_report
from common.report_task import TASK_FILES, TaskResult, summarise
from common.reuse import plan
from common.runs import run_plans
from common import run_folder
from common.run_folder import check_folder_writable, lock, make_folder
from common.runtime import COMPILE_MODES, pick_device
from common.saved_run import image_model_of
from common.folds import FOLDS, MAX_FOLDS, UNFINISHED_FOLDS, check_class_sizes, fold_folders, split_folds
from common.split import check_ratios, find_classes, list_files, source_listing, split_dataset

MAX_JOBS = 1000  # runs at a time; more would only share the same cores
DEFAULT_FOLDS = 5  # every image a test image once; 70 / 10 / 20 % as the report's own code split
DEFAULT_SEEDS = {True: 1, False: 3}  # cross-validated: one repetition; one split: mean ± std over 3 seeds
RUN_FOLDER = r"seed\d+|rep\d+"  # a task's runs: seed<S> on one split, rep<R>/fold<K> cross-validated


def own_entries():
    """What reproduce.py writes into --out and into its folders there, as a pattern per folder.
    Anything else is someone else's: REPORT.md or a task's figures would replace theirs, and their
    folders would mix with ours."""
    names = tasks.task_names()
    return {
        ".": "|".join(["splits", "cub_7classes", r"\.cub_7classes\.partial-\w+", *names,
                       atomic_files("REPORT.md", "summary.png")]),
        "splits": r"(?s).*-[0-9a-f]{8}-(seed|rep)\d+",  # make_splits' names: split_name's, or an earlier version's
        **{name: rf"{RUN_FOLDER}|{atomic_files(*TASK_FILES)}" for name in names},
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="folder with one sub-folder per class (default: the demo set)")
    source.add_argument("--cub", type=Path, metavar="PATH",
                        help="the report's own 7 CUB-200-2011 classes, from the CUB_200_2011 folder or .tgz archive")
    parser.add_argument("--out", type=Path, default=RESULTS / "reproduce",
                        help="results folder: a new one, or one reproduce.py made before, whose finished runs it "
                             "reuses (default: results/reproduce)")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, metavar="K",
                        help=f"stratified K-fold cross-validation: run i tests on fold i and trains and validates on "
                             f"the rest, so every image is a test image once; 1 = one train/validation/test split "
                             f"(--ratios), 1 to {MAX_FOLDS} (default: {DEFAULT_FOLDS}: 70 / 10 / 20 %% train / "
                             f"validation / test)")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds 0..N-1 (initialisation and batch order): with folds, N repetitions of the K "
                             f"folds, each drawn anew by its seed (K x N runs per task); with --folds 1, N runs on "
                             f"one split; 1 to {MAX_SEEDS} (default: {DEFAULT_SEEDS[True]} with folds, "
                             f"{DEFAULT_SEEDS[False]} with --folds 1)")
    parser.add_argument("--resplit", action="store_true",
                        help="with --folds 1: draw a new train/validation/test split for every seed")
    parser.add_argument("--ratios", type=float, nargs=3, metavar="R",
                        help="with --folds 1: train, validation, test fractions (default: 0.7 0.2 0.1 as the report's "
                             "text says; with --cub 0.7 0.1 0.2 as its code did: the report's split sizes, 291 / 42 / 84, "
                             "not its images, since each class is shuffled by the seed)")
    names = tasks.task_names()
    parser.add_argument("--tasks", nargs="+", choices=names, default=None, metavar="TASK",
                        help=f"run only these tasks, from {', '.join(names)} (default: all but task1_timm, "
                             "which needs a network for its weights)")
    parser.add_argument("--epochs", type=int, help="override every task's epochs, for a quick look (default: the report's)")
    parser.add_argument("--device", default="auto", help="passed to every task (default: auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="passed to every task (default: auto)")
    parser.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                        help="torch.compile for tasks 2 and 3: auto = where it can run (default: auto)")
    parser.add_argument("--augment", action="store_true",
                        help="every task trains on random resized crops and flips (see the task scripts' --augment); "
                             "use another --out than the unaugmented runs'")
    parser.add_argument("--no-tensorboard", action="store_true",
                        help="runs write no TensorBoard events (by default `tensorboard --logdir OUT` shows every "
                             "task, repetition and fold side by side)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="runs trained at a time, each a process on a device of its own (cuda:0, cuda:1, ...); "
                             "on the CPU they share the cores (default: one per visible GPU, 1 without)")
    parser.add_argument("--print-commands", action="store_true",
                        help="make the splits, print the command line of every run not yet finished and stop: "
                             "run them anywhere (a Slurm job array), then run this again for the report")
    parser.add_argument("--force", action="store_true", help="redo finished splits and runs instead of reusing them")
    args = parser.parse_args(argv)
    args.command = sys.argv[1:] if argv is None else argv
    args.seeds = DEFAULT_SEEDS[args.folds != 1] if args.seeds is None else args.seeds
    args.tasks = args.tasks or [task.name for task in tasks.all_tasks() if task.in_reproduction]
    check_numbers(args)
    check_source(args)
    check_results_folder(args)
    return args


def check_numbers(args):
    """--folds, --seeds, --epochs, --ratios, --device and --jobs in range and consistent; --jobs N gets
    its N devices."""
    if not 1 <= args.folds <= MAX_FOLDS:
        raise UserError(f"--folds {args.folds}: give 1 (one split) to {MAX_FOLDS}")
    if args.folds > 1 and (args.resplit or args.ratios):
        option = "--resplit" if args.resplit else "--ratios"
        raise UserError(f"{option} is for one split (--folds 1): with --folds {args.folds} every repetition draws "
                        "its folds anew, and the folds fix the proportions")
    if not 1 <= args.seeds <= MAX_SEEDS:
        raise UserError(f"--seeds {args.seeds}: give 1 to {MAX_SEEDS}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: need at least 1")
    if args.ratios:
        check_ratios(args.ratios)
    device = pick_device(args.device)  # every check before anything is created
    gpus = torch.cuda.device_count() if device.type == "cuda" and device.index is None else 1
    args.jobs = gpus if args.jobs is None else args.jobs
    if not 1 <= args.jobs <= MAX_JOBS:
        raise UserError(f"--jobs {args.jobs}: give 1 to {MAX_JOBS}")
    args.devices = [f"cuda:{i % gpus}" for i in range(args.jobs)] if gpus > 1 else [args.device] * args.jobs


def check_source(args):
    """The images to split are a folder of class folders; a CUB archive is read only when extracted."""
    if args.cub and not args.cub.is_file():
        find_classes(cub_images(args.cub, None), CUB_CLASSES)  # not an archive: nothing to extract into `work`
    if not args.data:
        return
    if not args.data.is_dir():
        raise UserError(f"--data {shown(args.data)}: no such folder")
    classes = find_classes(args.data)
    made = (MANIFEST, UNFINISHED_MANIFEST, FOLDS, UNFINISHED_FOLDS)  # by data_split.py
    if set(SPLITS) <= set(classes) or any((args.data / name).exists() for name in made):
        raise UserError(f"--data {shown(args.data)} is a split or folds folder (data_split.py's): reproduce.py "
                        "--data takes a folder of class folders and splits it itself; the task scripts take a split "
                        "folder")
    if args.folds > 1:  # each fold's test needs an image of every class: said before anything is written
        check_class_sizes({name: list_files(args.data, {name: folder}) for name, folder in classes.items()}, args.folds)


def check_results_folder(args):
    """--out is new, or a folder of reproduce.py's whose runs can be read; creates nothing."""
    source = args.data or (args.cub if args.cub and args.cub.is_dir() else None) or DEMO_IMAGES
    if is_inside(args.out, source):
        raise UserError(f"--out {shown(args.out)} is inside {shown(source)}: the next split would read the results "
                        "as a class")
    check_cache_outside(source, args.out / "splits")  # the folders the splits and the runs read
    check_folder_writable(args.out, "--out")
    entry = foreign_entry(args.out)
    if entry:
        raise UserError(foreign_message(args.out, entry))
    if not args.force:  # --force replaces the runs' files without reading them
        for task in map(tasks.load, args.tasks):
            for _, part in run_parts(args):
                check_run_files(args.out / task.name / part)


def foreign_entry(out):
    """The first entry of `out` that reproduce.py did not write, or None."""
    return run_folder.foreign_entry(out, own_entries(), "REPORT.md", lambda line: line.startswith(REPORT_TITLE))


def foreign_message(out, entry):
    """Why `out` is refused: an entry of someone else's, or runs of a task whose script is gone
    (its folder is ours, but reproduce.py no longer knows the task)."""
    if entry.parent == out and tasks.SCRIPT_NAME.fullmatch(entry.name) and entry.is_dir() and \
            any(re.fullmatch(RUN_FOLDER, p.name) for p in entry.iterdir()):
        return (f"--out {shown(out)} holds runs of {entry.name}, whose script {entry.name}.py is no longer here: "
                f"put the script back, or move {shown(entry)} away")
    return (f"--out {shown(out)} holds {shown(entry.relative_to(out))}, which reproduce.py did not write: "
            "pick a new folder, or one reproduce.py made")


def check_run_files(out):
    """The files that reusing a run reads must be regular files: a FIFO would block the reading forever."""
    for name in ("config.json", "metrics.json", "history.csv"):
        if os.path.lexists(out / name) and not (out / name).is_file():
            raise UserError(f"{shown(out / name)} is not a regular file: use --force to train that run again, "
                            "or another folder")


def source_images(args):
    if args.cub:
        return cub_images(args.cub, args.out / "cub_7classes"), CUB_CLASSES, "the report's 7 CUB-200-2011 classes"
    if args.data:
        return args.data, None, f"{args.data}"
    return DEMO_IMAGES, None, "the embedded demo set (Tux Paint stamps, 7 classes)"


def split_name(src):
    """A split folder's name from the source folder's real name (`--data .` names the folder it is),
    made safe: letters, digits, `_`, `-` and inner dots only, and short enough for any file system."""
    name = re.sub(r"[^\w.-]", "_", src.resolve().name).lstrip(".")[:50]
    return name or "data"


def make_splits(args):
    """The data folder of every run of a task, in run_parts' order, made once and then reused: with
    folds, repetition r's K fold folders (drawn by seed r); with --folds 1, one split folder per seed
    (--resplit) or one shared by all. A folder's name holds a hash of what it is made of, the source's
    file listing included: an image or class added to (or changed in) the source makes new folds,
    never silently reused old ones."""
    src, classes, description = source_images(args)
    ratios = None if args.folds > 1 else tuple(args.ratios or ((0.7, 0.1, 0.2) if args.cub else (0.7, 0.2, 0.1)))
    kind = f"folds={args.folds}" if args.folds > 1 else str(ratios)
    key = f"{src.resolve()}|{kind}|{classes}|{source_listing(src, classes)}"
    stem = args.out / "splits" / f"{split_name(src)}-{hashlib.sha1(key.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    folders = []
    with contextlib.redirect_stdout(sys.stderr):  # the splits' tables, beside the progress bar
        for seed in range(args.seeds):
            if args.folds > 1:
                folders += make_folds(src, Path(f"{stem}-rep{seed}"), seed, classes, args)
            else:
                folders.append(make_split(src, Path(f"{stem}-seed{seed if args.resplit else 0}"), ratios,
                                          seed if args.resplit else 0, classes, args.force))
    return folders, ratios, description


def make_folds(src, folder, seed, classes, args):
    """Repetition `seed`'s fold folders, drawn by its seed; an edited or unfinished set is refused or redrawn."""
    if args.force or not os.path.lexists(folder / FOLDS):
        split_folds(src, folder, args.folds, seed=seed, force=True, classes=classes)
    return fold_folders(folder, "use --force to draw them again, or another --out")  # whole, before any run starts


def make_split(src, folder, ratios, seed, classes, force):
    if force or not os.path.lexists(folder / MANIFEST):
        split_dataset(src, folder, ratios, seed=seed, force=True, classes=classes)
    split_sizes(folder)  # a reused split's manifest must read back, before any run starts
    return folder


def split_sizes(folder):
    rows = manifest_rows(folder / MANIFEST, f"delete {folder} to split again")
    return Counter(row["split"] for row in rows)


def run_parts(args):
    """(seed, folder under the task's) of every run of a task, in order: repetition r's fold k
    (rep<r>/fold<k>, seed r) cross-validated, else seed s on its split (seed<s>)."""
    if args.folds == 1:
        return [(seed, Path(f"seed{seed}")) for seed in range(args.seeds)]
    return [(seed, Path(f"rep{seed}") / f"fold{fold}") for seed in range(args.seeds) for fold in range(args.folds)]


def run_config(task, data, seed, part, args):
    """The task's run on `data` with this seed, into OUT/<task>/<part>, with the options reproduce.py gives it."""
    return task.config(**task.reproduce_with, data=data, seed=seed, out=args.out / task.name / part,
                       epochs=args.epochs or task.epochs, device=args.device, precision=args.precision,
                       augment=args.augment, no_tensorboard=args.no_tensorboard,
                       **({"compile": args.compile} if task.compiles else {}))


def plan_runs(chosen, splits, args):
    """Every task's runs (run_parts) on their data folders, in order: what is finished, what continues, what starts."""
    return [plan(task, run_config(task, data, seed, part, args), args.force,
                 part=" ".join(part.parts) if args.folds > 1 else "")
            for task in chosen for (seed, part), data in zip(run_parts(args), splits)]


def unprintable(c):
    """A control character, or a byte that is not UTF-8 (os.fsdecode keeps it as a surrogate)."""
    return ord(c) < 32 or ord(c) == 127 or 0xDC80 <= ord(c) <= 0xDCFF


def shell_word(word):
    """`word` quoted for a POSIX shell, on one line whatever it holds: a word with an unprintable
    character (a newline would end the line) is written in bash's $'...' form, each such byte as \\xHH."""
    if not any(map(unprintable, word)):
        return shlex.quote(word)
    escaped = (f"\\x{ord(c) & 0xFF:02x}" if unprintable(c) else "\\" + c if c in "\\'" else c for c in word)
    return "$'" + "".join(escaped) + "'"


def print_commands(plans, args):
    """Every unfinished run's command line, exactly one line each, every word quoted (eval runs none
    of what a path holds), runnable in any order or all at once."""
    for planned in plans:
        if not planned.reused:
            print(" ".join(map(shell_word, [sys.executable, str(task_script(planned.task.name)),
                                            *command_line(planned.task, planned.config)])))


def main(argv=None):
    """Every task's runs, then REPORT.md."""
    args = parse_args(argv)
    make_folder(args.out, "--out")
    with lock(args.out, "--out"):  # two reproductions into one folder would replace each other's files
        run_all(args)


def run_all(args):
    began = time.perf_counter()
    splits, ratios, description = make_splits(args)
    chosen = [tasks.load(name) for name in tasks.task_names() if name in args.tasks]
    plans = plan_runs(chosen, splits, args)
    if args.print_commands:
        return print_commands(plans, args)
    with tqdm(total=len(plans), desc="reproduce", unit="run", dynamic_ncols=True) as progress:
        metrics, missing = run_plans(plans, args.devices, progress)  # the bar ends its line, whatever happens
    how = Reproduction(args.command, description, ratios, split_sizes(splits[0]), args.seeds, args.resplit,
                       args.epochs, args.augment, bool(args.cub), folds=args.folds)
    task_results = []
    for task in chosen:
        own = [planned for planned in plans if planned.task is task]
        title = task.title_for(own[0].config)
        if task in missing:
            task_results.append(TaskResult(task.name, title, task.course_report, missing=missing[task],
                                           course_setting=task.course_setting(own[0].config)))
        else:
            task_results.append(summarise(task.name, title, [p.config.out for p in own], [metrics[p] for p in own],
                                          args.out, how, args.epochs or task.epochs, task.course_report,
                                          task.course_setting(own[0].config),
                                          explain=functools.partial(image_model_of, task)))
    how = dataclasses.replace(how, minutes=(time.perf_counter() - began) / 60)
    write_report(args.out, how, task_results, {t.name: t.epochs for t in chosen})
    print(f"wrote {args.out / 'REPORT.md'}")


if __name__ == "__main__":
    run_main(main)
