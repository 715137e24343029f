"""Reproduce the whole report: split the data, run every task over N seeds, write results/reproduce/REPORT.md.

    python reproduce.py                      # the embedded demo data, 3 seeds (mean ± std)
    python reproduce.py --data MY_IMAGES     # any folder with one sub-folder per class
    python reproduce.py --cub CUB_200_2011.tgz --seeds 5

Finished runs are reused: run it again after an interruption, or with more --seeds, and only
what is missing is trained. --force trains everything again.

Runs are independent (task x seed): --jobs N trains N at a time, each on a GPU of its own, and
--print-commands prints every unfinished run's command line instead, for a cluster scheduler (a
Slurm job array, say) to run; reproduce.py then reuses them and writes the report.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from common import results
from common.backbones import WeightsUnavailable
from common.cli import UserError, run_main
from common.data import MANIFEST, SPLITS, UNFINISHED_MANIFEST, check_cache_outside
from common.report import REPORT_TITLE, summarise, write_report
from common.run_folder import (check_folder_writable, is_inside, lock, make_folder, planned_argv, read_json,
                               run_or_reuse)
from common.runtime import COMPILE_MODES, pick_device
from common.train import EPOCH_LISTENERS, STOPPED_EXIT_CODES
from common.split import (CUB_CLASSES, DEMO_IMAGES, check_ratios, cub_images, find_classes, manifest_rows,
                          source_listing, split_dataset)

REPO = Path(__file__).resolve().parent
MAX_SEEDS = 1000
MAX_JOBS = 1000  # runs at a time; more would only share the same cores
DEFAULT_SEEDS = 3  # mean ± std by default: 8.0 minutes measured for the demo data on 2 CPU cores (README)
PROGRESS_EVERY_S = 2  # how often the bar shows the epochs of runs under way in processes of their own
LIKE_CTRL_C = (signal.SIGTERM, signal.SIGHUP)  # a scheduler's kill, a closed terminal: both stop like Ctrl-C


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, to key dicts
class Task:
    name: str          # script module and run folder
    title: str
    epochs: int        # the report's
    argv: tuple = ()
    compiles: bool = False  # takes --compile (tasks 2 and 3: long enough to repay compilation)
    report: dict = None  # the 2020 report's table: split -> (logloss, top-1, top-3)


def report_table(train, validation, test):
    return {split: dict(zip(("loss", "top1", "top3"), values))
            for split, values in zip(("train", "validation", "test"), (train, validation, test))}


TASKS = (
    Task("task1_googlenet", "GoogLeNet, frozen, linear head", 20, report=report_table(
        (0.2897, 93.47, 100.00), (0.4072, 88.09, 97.62), (0.4880, 86.90, 96.43))),
    Task("task1_vgg", "VGG16, frozen, linear head", 20, report=report_table(
        (0.0005, 100.00, 100.00), (1.0316, 80.95, 97.62), (0.9658, 77.38, 95.24))),
    Task("task1_resnet", "ResNet50, frozen, linear head", 20, report=report_table(
        (0.1447, 98.97, 100.00), (0.2758, 95.24, 100.00), (0.3347, 94.05, 97.62))),
    Task("task1_efficientnet", "EfficientNet-Lite0, frozen, linear head", 20),
    Task("task2_shallow", "Shallow ConvNet", 100, compiles=True, report=report_table(
        (0.7122, 84.19, 97.25), (1.4634, 40.48, 73.81), (1.3038, 47.62, 79.76))),
    Task("task3_netvlad", "Shallow ConvNet + NetVLAD (K=16, k-means init)", 100, ("--clusters", "16"), True, report=report_table(
        (1.9054, 26.00, 62.31), (1.9287, 30.95, 40.48), (1.9338, 29.24, 40.48))),
)


def atomic_files(*names):
    """A pattern for these file names and the temporary .NAME.PID.tmp beside each that an atomic
    write (results.temp_path) killed midway leaves."""
    names = "|".join(map(re.escape, names))
    return rf"{names}|\.(?:{names})\.\d+\.tmp"


# What reproduce.py writes into --out and into its folders there. Anything else is someone else's:
# REPORT.md or a task's figures would replace theirs, and their folders would mix with ours.
OWN_ENTRIES = {
    ".": "|".join(["splits", "cub_7classes", r"\.cub_7classes\.partial-\w+", *(t.name for t in TASKS),
                   atomic_files("REPORT.md")]),
    "splits": r"(?s).*-[0-9a-f]{8}-seed\d+",  # make_splits' names: split_name's, or an earlier version's (any)
    **{t.name: rf"seed\d+|{atomic_files('loss.png', 'accuracy.png', 'metrics.md')}" for t in TASKS},
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="folder with one sub-folder per class (default: the demo set)")
    source.add_argument("--cub", type=Path, metavar="PATH",
                        help="the report's own 7 CUB-200-2011 classes, from the CUB_200_2011 folder or .tgz archive")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "reproduce",
                        help="results folder: a new one, or one reproduce.py made before, whose finished runs it "
                             "reuses (default: results/reproduce)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"runs per task, seeds 0..N-1 (different initialisation and batch order); with N > 1 "
                             f"every table shows mean ± std, 1 to {MAX_SEEDS} (default: {DEFAULT_SEEDS}: about 8-10 minutes "
                             f"for the demo data on 2 CPU cores)")
    parser.add_argument("--resplit", action="store_true", help="draw a new train/validation/test split for every seed")
    parser.add_argument("--ratios", type=float, nargs=3, metavar="R",
                        help="train, validation, test fractions (default: 0.7 0.2 0.1 as the report's text says; "
                             "with --cub 0.7 0.1 0.2 as its code did, so the test set is the report's 84 images)")
    names = [t.name for t in TASKS]
    parser.add_argument("--tasks", nargs="+", choices=names, default=names, metavar="TASK",
                        help=f"run only these tasks, from {', '.join(names)} (default: all)")
    parser.add_argument("--epochs", type=int, help="override every task's epochs, for a quick look (default: the report's)")
    parser.add_argument("--device", default="auto", help="passed to every task (default: auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="passed to every task (default: auto)")
    parser.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                        help="torch.compile for tasks 2 and 3: auto = where it can run (default: auto)")
    parser.add_argument("--augment", action="store_true",
                        help="every task trains on random resized crops and flips (see the task scripts' --augment); "
                             "use another --out than the unaugmented runs'")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="runs trained at a time, each a process on a device of its own (cuda:0, cuda:1, ...); "
                             "on the CPU they share the cores (default: one per visible GPU, 1 without)")
    parser.add_argument("--print-commands", action="store_true",
                        help="make the splits, print the command line of every run not yet finished and stop: "
                             "run them anywhere (a Slurm job array), then run this again for the report")
    parser.add_argument("--force", action="store_true", help="redo finished splits and runs instead of reusing them")
    args = parser.parse_args(argv)
    args.command = sys.argv[1:] if argv is None else argv
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
    check_source(args)
    check_out(args)
    return args


def check_source(args):
    """The images to split are a folder of class folders; a CUB archive is read only when extracted."""
    if args.cub and not args.cub.is_file():
        find_classes(cub_images(args.cub, None), CUB_CLASSES)  # not an archive: nothing to extract into `work`
    if not args.data:
        return
    if not args.data.is_dir():
        raise UserError(f"--data {args.data}: no such folder")
    classes = find_classes(args.data)
    if set(SPLITS) <= set(classes) or any((args.data / name).exists() for name in (MANIFEST, UNFINISHED_MANIFEST)):
        raise UserError(f"--data {args.data} is a split folder (train/, validation/, test/): reproduce.py --data takes "
                        "a folder of class folders and splits it itself; the task scripts take a split folder")


def check_out(args):
    """--out is new, or a folder of reproduce.py's whose runs can be read; creates nothing."""
    source = args.data or (args.cub if args.cub and args.cub.is_dir() else None) or DEMO_IMAGES
    if is_inside(args.out, source):
        raise UserError(f"--out {args.out} is inside {source}: the next split would read the results as a class")
    check_cache_outside(source, args.out / "splits")  # the folders the splits and the runs read
    check_folder_writable(args.out, "--out")
    entry = foreign_entry(args.out)
    if entry:
        raise UserError(f"--out {args.out} holds {entry.relative_to(args.out)}, which reproduce.py did not write: "
                        "pick a new folder, or one reproduce.py made")
    if not args.force:  # --force replaces the runs' files without reading them
        for task in (t for t in TASKS if t.name in args.tasks):
            for seed in range(args.seeds):
                check_run_files(run_folder(task, seed, args))


def foreign_entry(out):
    """The first entry of `out` that reproduce.py did not write, or None. A REPORT.md counts as ours
    only if it opens with our title: the name alone is a common one."""
    for name, pattern in OWN_ENTRIES.items():
        if (out / name).is_dir():
            entry = next((p for p in sorted((out / name).iterdir()) if not re.fullmatch(pattern, p.name)), None)
            if entry:
                return entry
    report = out / "REPORT.md"
    return report if os.path.lexists(report) and not written_by_us(report) else None


def written_by_us(report):
    if not report.is_file():  # a folder, or a FIFO whose reading would wait forever
        return False
    with open(report, "rb") as f:
        return f.read(len(REPORT_TITLE.encode())) == REPORT_TITLE.encode()


def check_run_files(out):
    """The files that reusing a run reads must be regular files: a FIFO would block the reading forever."""
    for name in ("config.json", "metrics.json", "history.csv"):
        if os.path.lexists(out / name) and not (out / name).is_file():
            raise UserError(f"{out / name} is not a regular file: use --force to train that run again, "
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
    """One split folder per seed (--resplit) or one shared by all; made once, then reused. Its name
    holds a hash of what the split is made of, the source's file listing included: an image or class
    added to (or changed in) the source makes a new split, never a silently reused old one."""
    src, classes, description = source_images(args)
    ratios = tuple(args.ratios or ((0.7, 0.1, 0.2) if args.cub else (0.7, 0.2, 0.1)))
    key = f"{src.resolve()}|{ratios}|{classes}|{source_listing(src, classes)}"
    tag = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    folders = []
    for seed in range(args.seeds):
        split_seed = seed if args.resplit else 0
        folder = args.out / "splits" / f"{split_name(src)}-{tag}-seed{split_seed}"
        if args.force or not os.path.lexists(folder / MANIFEST):
            with contextlib.redirect_stdout(sys.stderr):
                split_dataset(src, folder, ratios, seed=split_seed, force=True, classes=classes)
        split_sizes(folder)  # a reused split's manifest must read back, before any run starts
        folders.append(folder)
    return folders, ratios, description


def split_sizes(folder):
    rows = manifest_rows(folder / MANIFEST, f"delete {folder} to split again")
    return Counter(row["split"] for row in rows)


def task_argv(task, data, seed, args, device=None):
    return ["--data", str(data), "--seed", str(seed), "--device", device or args.device, "--precision", args.precision,
            *task.argv, *(("--compile", args.compile) if task.compiles else ()), *(("--augment",) if args.augment else ())]


def run_folder(task, seed, args):
    return args.out / task.name / f"seed{seed}"


def runs_under_way(running):
    """The progress of the runs training in processes of their own, briefly, as several share the
    line: `running` maps a run folder to (name, epochs); its last history.csv row says how far it is."""
    shown = []
    for out, (name, epochs) in sorted(list(running.items()), key=lambda item: item[1][0]):
        try:
            row = results.read_history(out)[-1]
            shown.append(f"{name}: epoch {int(row['epoch'])}/{epochs}, val top-1 {float(row['val_top1']):.1f} %")
        except (OSError, ValueError, KeyError, IndexError, TypeError):  # not written yet (or not by us)
            shown.append(f"{name}: starting")
    return "; ".join(shown)


def run_once(task, data, seed, args):
    """Train one task with one seed into OUT/<task>/seed<N>/, or reuse the run finished there."""
    return run_or_reuse(importlib.import_module(task.name).main, task_argv(task, data, seed, args),
                        run_folder(task, seed, args), args.epochs or task.epochs, args.force)


def run_as_process(task, data, seed, args, devices, children, running):
    """run_once as a process of its own, on a device taken from the queue `devices` while it trains.
    The process is in `children` while it runs: in a session of its own, so that a Ctrl-C reaches it
    once, forwarded by run_concurrently, and it saves a checkpoint before it stops. Its run folder is
    in `running` meanwhile, for the progress bar."""
    out, epochs = run_folder(task, seed, args), args.epochs or task.epochs
    device = devices.get()
    try:
        argv = planned_argv(task_argv(task, data, seed, args, device), out, epochs, args.force)
        if argv is None:
            return read_json(out / "metrics.json")
        make_folder(out, "run folder")
        env = dict(os.environ)
        if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))  # the jobs share the cores
        with results.open_regular(out / "log.txt", "a") as log:
            child = subprocess.Popen([sys.executable, str(REPO / f"{task.name}.py"), *argv], stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
            children.add(child)
            running[out] = (f"{task.name} seed {seed}", epochs)
            code = child.wait()
            children.discard(child)
            running.pop(out)
    finally:
        devices.put(device)
    if code == WeightsUnavailable.exit_code:
        raise WeightsUnavailable(last_error(out / "log.txt"))
    if code in STOPPED_EXIT_CODES:  # it saved a checkpoint on Ctrl-C, SIGTERM or SIGHUP
        raise UserError(f"{task.name} seed {seed} was stopped (see {out / 'log.txt'}); run reproduce.py again to continue")
    if code != 0:
        raise UserError(f"{task.name} seed {seed} failed (exit code {code}): {last_error(out / 'log.txt')} "
                        f"(see {out / 'log.txt'})")
    return read_json(out / "metrics.json")


def last_error(log):
    with results.open_regular(log, errors="replace") as f:
        lines = [line for line in f.read().splitlines() if line.startswith("error: ")]
    return lines[-1][len("error: "):] if lines else "no error message"


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


def print_commands(tasks, splits, args):
    """Every unfinished run's command line, exactly one line each, every word quoted (eval runs none
    of what a path holds), runnable in any order or all at once."""
    for task in tasks:
        for seed, data in enumerate(splits):
            argv = planned_argv(task_argv(task, data, seed, args), run_folder(task, seed, args),
                                args.epochs or task.epochs, args.force)
            if argv is not None:
                print(" ".join(map(shell_word, [sys.executable, str(REPO / f"{task.name}.py"), *argv])))


@contextlib.contextmanager
def signals_as_ctrl_c():
    """SIGTERM and SIGHUP do what Ctrl-C does at that moment (inside a run: stop after a checkpoint;
    elsewhere KeyboardInterrupt, which stops the runs in processes of their own): ending reproduce.py
    never leaves a run training unattended. A signal ignored when we started (nohup) stays ignored."""
    def as_ctrl_c(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIGINT ignored (a background job) or default: stop all the same
            raise KeyboardInterrupt
        handler(signum, frame)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {s: signal.getsignal(s) for s in LIKE_CTRL_C}
    for s, handler in previous.items():
        if handler == signal.SIG_DFL:
            signal.signal(s, as_ctrl_c)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv=None):
    """Every task over every seed, then REPORT.md."""
    with signals_as_ctrl_c():
        args = parse_args(argv)
        make_folder(args.out, "--out")
        with lock(args.out, "--out"):  # two reproductions into one folder would replace each other's files
            run_all(args)


def run_all(args):
    began = time.perf_counter()
    splits, ratios, description = make_splits(args)
    tasks = [dataclasses.replace(t, title=t.title + ", augmented" if args.augment else t.title)
             for t in TASKS if t.name in args.tasks]
    if args.print_commands:
        return print_commands(tasks, splits, args)
    with tqdm(total=len(tasks) * args.seeds, desc="reproduce", unit="run", dynamic_ncols=True) as progress:
        runs, missing = run_tasks(tasks, splits, args, progress)  # the bar ends its line, whatever happens
    summaries = {task: summarise(task, task_runs, args.out, args.epochs or task.epochs)
                 for task, task_runs in runs.items() if task not in missing}
    write_report(args, tasks, summaries, missing, ratios, description, time.perf_counter() - began, split_sizes(splits[0]))
    print(f"wrote {args.out / 'REPORT.md'}")


def show_result(task, seed, metrics):
    """One line above the bar for a finished run: its test top-1 and logloss."""
    test = metrics["test"]
    tqdm.write(f"{task.name} seed {seed}: test top-1 {test['top1']:.2f} %, logloss {test['loss']:.4f}")


def run_tasks(tasks, splits, args, progress):
    """Every task over every seed; returns the runs' metrics and the tasks whose weights are missing."""
    if args.jobs > 1:
        return run_concurrently(tasks, splits, args, progress)
    runs, missing = {}, {}
    for task in tasks:
        for seed, data in enumerate(splits):
            def show_epoch(row, epochs, name=f"{task.name} seed {seed}"):
                progress.set_postfix_str(f"{name}: epoch {row['epoch']}/{epochs}, train loss {row['train_loss']:.3f}, "
                                         f"val top-1 {row['val_top1']:.1f} %")
            progress.set_postfix_str(f"{task.name} seed {seed}")
            EPOCH_LISTENERS.append(show_epoch)
            try:
                runs.setdefault(task, []).append(run_once(task, data, seed, args))
            except WeightsUnavailable as e:
                missing[task] = str(e)
                progress.update(args.seeds - seed)
                tqdm.write(f"{task.name}: weights unavailable, skipped ({e})")
                break
            except SystemExit:  # Ctrl-C inside the run: it said so in its log.txt; say it here too
                tqdm.write(f"{task.name} seed {seed}: stopped (see {args.out / task.name / f'seed{seed}' / 'log.txt'}); "
                           "run reproduce.py again to continue")
                raise
            finally:
                EPOCH_LISTENERS.remove(show_epoch)
            progress.update()
            show_result(task, seed, runs[task][-1])
    return runs, missing



def collect(future, task, seed, metrics, missing):
    """A finished run's metrics into `metrics`, or its task into `missing` if its weights are unavailable."""
    try:
        metrics[task, seed] = future.result()
        show_result(task, seed, metrics[task, seed])
    except WeightsUnavailable as e:
        if task not in missing:
            tqdm.write(f"{task.name}: weights unavailable, skipped ({e})")
        missing[task] = str(e)


def run_concurrently(tasks, splits, args, progress):
    """run_tasks with --jobs N: N runs at a time, each a process on a device of its own. Ctrl-C (or
    SIGTERM or SIGHUP, see signals_as_ctrl_c) stops them all as Ctrl-C stops one run: each saves a
    checkpoint and stops after its epoch."""
    devices, children, running = queue.Queue(), set(), {}
    for device in args.devices:
        devices.put(device)
    metrics, missing = {}, {}
    pool = ThreadPoolExecutor(args.jobs)
    try:
        futures = {pool.submit(run_as_process, task, data, seed, args, devices, children, running): (task, seed)
                   for task in tasks for seed, data in enumerate(splits)}
        pending = set(futures)
        while pending:  # wakes every PROGRESS_EVERY_S to show how far the runs under way are
            finished, pending = wait(pending, timeout=PROGRESS_EVERY_S, return_when=FIRST_COMPLETED)
            progress.set_postfix_str(runs_under_way(running))
            for future in finished:
                collect(future, *futures[future], metrics, missing)
                progress.update()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # runs not started yet never start
        for child in list(children):
            child.send_signal(signal.SIGINT)  # checkpoint, then stop
        raise
    finally:
        pool.shutdown(wait=True)  # the runs under way end first
    runs = {task: [metrics[task, seed] for seed in range(len(splits))] for task in tasks if task not in missing}
    return runs, missing


if __name__ == "__main__":
    run_main(main)
