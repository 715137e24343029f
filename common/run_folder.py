"""The run folder: the options every task shares, the checks made before anything is written,
the lock held while a run writes, the resume key and checkpoint, and reuse by reproduce.py."""
import contextlib
import fcntl
import json
import math
import os
import pickle
import zipfile
from pathlib import Path

import torch

from common import distributed
from common.cli import UserError
from common.results import COLUMNS, HISTORY_FIELDS, ROWS, open_regular
from common.runtime import COMPILE_MODES, PRECISIONS

REPO = Path(__file__).resolve().parent.parent
# Everything a run writes into --out, but reproduce.py's log.txt.
RUN_FILES = ("config.json", "history.csv", "loss.png", "accuracy.png", "last.pt", "best.pt",
             "metrics.md", "metrics.json", "metrics.csv", "confusion.png", "confusion.csv")
FINAL_FILES = RUN_FILES[-5:]  # they describe a finished run: gone while a resumed one trains
MAX_BATCH = 2 ** 31 - 1
SEEDS = 2 ** 32  # numpy's seed range, 0 .. 2**32 - 1
# Options that may change between a run and its --resume: where things go, how long, where it computes.
# --data and --weights are keyed by content instead (data_fingerprint, weights fingerprint), so moving
# a file is no change. The device and compilation change rounding only; precision is keyed.
NOT_KEYED = {"out", "resume", "force", "epochs", "device", "compile", "precision", "data", "weights"}


def add_training_args(parser, task, epochs, batch_size):
    """The options every task script shares, with the report's settings as defaults."""
    parser.add_argument("--data", type=Path, default=None,
                        help="split folder holding train/, validation/ and test/, each with one folder per class "
                             "(default: the demo split data/demo_split, made from demo_data/images when missing)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / task,
                        help=f"folder for tables, plots, config and checkpoints (default: results/{task})")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default: {epochs})")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"batch size (default: {batch_size})")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    parser.add_argument("--gamma", type=float, default=0.9,
                        help="StepLR factor applied to the learning rate after every epoch (default: 0.9)")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"seed for initialisation, batch order and dropout, 0 to {SEEDS - 1} (default: 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto = bf16 autocast on CPUs with AMX (not for task 3, which it slows) and "
                             "bf16-capable GPUs, fp32 elsewhere; "
                             "fp32 turns mixed precision off (default: auto)")
    parser.add_argument("--augment", action="store_true",
                        help="train on randomly resized crops (35-100 %% of the area) and horizontal flips of the "
                             "training images; evaluation stays resize 256 / centre crop 224 (default: off)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint (refused if any setting differs)")
    parser.add_argument("--force", action="store_true", help="replace the results of an earlier run in --out")


def add_compile_arg(parser):
    """--compile, for the tasks whose training is long enough to repay compilation (2 and 3)."""
    parser.add_argument("--compile", choices=COMPILE_MODES, default="auto",
                        help="torch.compile the model: auto = where it can run (a C++ compiler on the CPU, "
                             "or CUDA), else eager with a warning; it costs some seconds once and rounds "
                             "differently from eager (default: auto)")


def check_args(args):
    """Every shared option in range, before anything is read or written."""
    checks = (("epochs", args.epochs >= 1, "at least 1"),
              ("batch-size", 1 <= args.batch_size <= MAX_BATCH, f"from 1 to {MAX_BATCH}"),
              ("lr", math.isfinite(args.lr) and args.lr > 0, "a positive finite number"),
              ("gamma", 0 < args.gamma <= 1, "a number in (0, 1]"),  # also false for nan
              ("seed", 0 <= args.seed < SEEDS, f"from 0 to {SEEDS - 1}"))
    for name, ok, expected in checks:
        if not ok:
            raise UserError(f"--{name} {getattr(args, name.replace('-', '_'))} is out of range: give {expected}")
    if args.resume and args.force:
        raise UserError("--resume and --force contradict each other: pick one")


def is_inside(path, folder):
    """True if `path` is `folder` or below it, links followed (realpath: a symlink loop is no error)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_folder_writable(path, label):
    """Refuse a path that is a file or lies below no writable folder, without creating anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{label} {path} is a file, not a folder")
    existing = next(p for p in [path.absolute(), *path.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {label} {path} ({existing} is not a writable folder)")


def make_folder(path, label):
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {label} {path}: {e.strerror or e}") from None


def check_results(out, resume, force):
    """What --out holds must fit --resume / --force: never write over a run, or over files not ours."""
    stopped_early = (out / "config.json").exists() and not (out / "last.pt").exists()
    if resume and not (out / "last.pt").exists():
        raise UserError(f"--resume: {out} holds no checkpoint (last.pt)" +
                        ("; the run stopped before its first one: --force starts it again" if stopped_early else ""))
    if resume or force:
        return
    if (out / "last.pt").exists():
        raise UserError(f"{out} already holds a run: --resume continues it, --force replaces it, --out picks another folder")
    if stopped_early:
        raise UserError(f"{out} holds a run stopped before its first checkpoint: --force starts it again, "
                        "--out picks another folder")
    others = sorted(p.name for p in out.iterdir() if p.name != "log.txt") if out.is_dir() else []
    if others:
        raise UserError(f"--out {out} already holds other files (e.g. {others[0]}): pick a new or empty folder, "
                        "or --force to write there (replacing files named like a run's)")


def clear_previous(out, force):
    """Before training: --force removes the earlier run's files, --resume the final tables that no
    longer describe the run; temporary files of a killed writer go too (the lock is ours)."""
    for name in RUN_FILES if force else FINAL_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_FILES:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def check_out(args, *image_folders):
    """Everything about --out that can be known before the data is loaded; creates nothing."""
    for folder in image_folders:
        if is_inside(args.out, folder):
            raise UserError(f"--out {args.out} is inside {folder}: results there would be read as images")
    check_folder_writable(args.out, "--out")
    check_results(args.out, args.resume, args.force)
    if args.out.is_dir():
        with lock(args.out, "--out"):  # only a probe: fail now rather than after loading the data
            pass


@contextlib.contextmanager
def lock(folder, label):
    """Hold an exclusive lock on FOLDER itself, or refuse at once if another process holds it.

    flock on the folder's own descriptor leaves no file behind, and the kernel releases it when
    the process ends, however it ends: no stale locks.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise UserError(f"cannot open {label} {folder}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{label} {folder} is in use by another run; wait for it to finish "
                            "or pick another folder") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_run_folder(out, resume, force):
    """Create --out and hold its lock while the run writes; re-checks under the lock."""
    make_folder(out, "--out")
    with lock(out, "--out"):
        check_results(out, resume, force)  # another run may have finished there since check_out
        yield


# --- resume ---------------------------------------------------------------------------------

def run_key(run):
    """Every setting that changes a run's result; a resumed run must share all of them.

    The task's own options (--clusters, --init, --alpha, --no-pretrained, ...) come in through
    vars(args); `run.identity` adds what the task knows only after loading (weights fingerprint).
    The number of torchrun processes counts (they draw other dropout masks), named only above 1, so
    the checkpoints of one process made before it was keyed still resume.
    """
    options = {f"--{name.replace('_', '-')}": str(value) if isinstance(value, Path) else value
               for name, value in vars(run.args).items() if name not in NOT_KEYED}  # plain data only
    processes = {"torchrun processes": distributed.world()} if distributed.world() > 1 else {}
    return {"task": run.task, **options, "--precision": run.precision, "classes": list(run.data.classes),
            "data (image content)": run.data.fingerprint(), **processes, **run.identity}


def key_differences(saved, now):
    names = [*saved, *(n for n in now if n not in saved)]
    return [f"{name} {saved.get(name, 'unset')} in the checkpoint, {now.get(name, 'unset')} now"
            for name in names if saved.get(name) != now.get(name)]


CHECKPOINT_TYPES = {"epoch": int, "key": dict, "model": dict, "optimizer": dict, "scheduler": dict,
                    "rng": torch.Tensor, "shuffle_rng": torch.Tensor, "history": list, "best": dict}


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def well_formed(state):
    """The plain data that fit() uses directly has the shapes fit() wrote; tensors are checked on loading."""
    epoch, history, best = state.get("epoch"), state.get("history"), state.get("best")
    return (all(isinstance(state.get(k), t) for k, t in CHECKPOINT_TYPES.items())
            and epoch >= 1 and len(history) == epoch
            and all(isinstance(row, dict) and all(is_number(row.get(f)) for f in HISTORY_FIELDS) for row in history)
            and is_number(best.get("loss"))
            and (best["loss"] == math.inf or (isinstance(best.get("epoch"), int) and isinstance(best.get("model"), dict))))


def checkpoint_damage(path):
    """Why the file torch.save wrote at `path` is damaged, or None where every byte is as written.

    torch.save writes a zip archive, which holds a CRC-32 of each member; torch.load never checks
    them, so a flipped byte inside a tensor would load as a silently different weight. Reading the
    whole file once costs little beside loading it: 0.13 s for task 2's 373 MB last.pt, which
    torch.load reads in 0.22 s (2 CPU cores, file in the page cache)."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        return f"not a whole zip archive as torch.save writes: {e}"
    return f"{member} fails its CRC-32 check" if member else None


def load_checkpoint(path):
    """last.pt as plain data: weights_only refuses any pickled object that could run code.

    Loaded to the CPU whatever the run's device: the RNG states must be CPU tensors, and loading
    the weights and Adam's state copies them to the model's device."""
    start_over = f"start over with --force (it replaces {path.parent})"
    if not path.is_file():  # reading a FIFO would wait forever
        raise UserError(f"--resume: {path} is not a regular file; {start_over}")
    damage = checkpoint_damage(path)
    if damage:
        raise UserError(f"--resume: {path} is corrupt or unreadable ({damage}), refused; {start_over}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"--resume: {path} holds objects other than tensors and plain data, so it is not a "
                        f"checkpoint of this project and was not loaded; {start_over}") from None
    except Exception as e:  # truncated or garbled files raise RuntimeError, EOFError, OSError, ...
        raise UserError(f"--resume: {path} is corrupt or unreadable ({type(e).__name__}); {start_over}") from None
    if not isinstance(state, dict) or not well_formed(state):
        raise UserError(f"--resume: {path} is not a checkpoint of this project; {start_over}")
    return state


def check_resumable(state, run):
    differences = key_differences(state["key"], run_key(run))
    if differences:
        raise UserError(f"--resume: {run.out} was made with other settings: {'; '.join(differences)}")
    if state["epoch"] > run.args.epochs:
        raise UserError(f"--resume: {run.out} has trained {state['epoch']} epochs already, more than --epochs "
                        f"{run.args.epochs}: give --epochs {state['epoch']} or more, or --force to start over")


def optimizer_settings(optimizer):
    """Each parameter group's settings but its parameters and learning rate (betas, eps, ...)."""
    return [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")} for g in optimizer.param_groups]


def check_schedule(optimizer, scheduler, epochs_done, initial_lrs, settings, args, path):
    """After loading: each parameter group's learning rate and the schedule must be what --lr (and
    a fine-tuned backbone's factor, in initial_lrs) and --gamma give after that many epochs, and its
    other settings those the optimizer was built with (`settings`, taken before loading), so a
    doctored optimizer or scheduler state is refused, not trained on."""
    groups = optimizer.param_groups
    fits = (scheduler.last_epoch == epochs_done and scheduler.gamma == args.gamma and scheduler.step_size == 1
            and len(groups) == len(initial_lrs)
            and all(is_number(g.get("lr")) and math.isclose(g["lr"], lr * args.gamma ** epochs_done, rel_tol=1e-6)
                    for g, lr in zip(groups, initial_lrs))
            # repr: a doctored value may be a tensor or a tuple of anything, which == would not settle
            and all(repr(g.get(k, v)) == repr(v) for g, group in zip(groups, settings) for k, v in group.items()))
    if not fits:
        raise UserError(f"--resume: the optimizer or schedule in {path} does not match --lr {args.lr} and --gamma "
                        f"{args.gamma} after {epochs_done} epochs; start over with --force")


# --- reuse ----------------------------------------------------------------------------------

def read_json(file):
    """A file's JSON; an OSError where it is missing or no regular file (a FIFO would be waited on forever)."""
    with open_regular(file) as f:
        return json.load(f)


def read_config(out):
    """config.json of a run, with the fields that reuse and reports read; None if there is none."""
    file = out / "config.json"
    if not file.exists():
        return None
    try:
        config = read_json(file)
        if isinstance(config["arguments"]["epochs"], int) and isinstance(config["parameters"]["trainable"], int):
            return config
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deeply
        pass
    raise UserError(f"{out / 'config.json'} is unreadable or was not written by this project: "
                    "use --force to train that run again, or another folder")


def finished_metrics(out):
    """metrics.json of a finished run, or None when it is missing or damaged (the run is then resumed)."""
    try:
        metrics = read_json(out / "metrics.json")
        if all(is_number(metrics[split][m]) for split, _ in ROWS for m, _ in COLUMNS):
            return metrics
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        pass
    return None


def option_differences(recorded, argv):
    """The options named in argv ("--name value" or a bare "--flag") whose value differs from the
    arguments a run recorded in its config.json, as readable strings."""
    differences, i = [], 0
    while i < len(argv):
        name = argv[i][2:].replace("-", "_")
        has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        asked, i = (argv[i + 1], i + 2) if has_value else (True, i + 1)
        if name in ("device", "compile"):  # they change rounding, not the experiment (as in run_key)
            continue
        had = recorded.get(name)
        if asked is True:
            same = had is True
        elif isinstance(had, (int, float)) and not isinstance(had, bool):
            try:
                same = float(asked) == had
            except ValueError:
                same = False
        else:
            same = asked in (str(had), str(Path(str(had))))
        if not same:
            differences.append(f"--{name.replace('_', '-')} {had} there, {asked} asked")
    return differences


def planned_argv(argv, out, epochs, force=False):
    """What a task script needs to train `epochs` into `out`: None when out holds that finished run
    (reuse it), else argv plus --epochs, --out and --resume (an interrupted or shorter run
    continues from its checkpoint) or --force (`force`, or nothing to continue from)."""
    config = None if force else read_config(out)
    recorded = config["arguments"]["epochs"] if config else None
    differences = option_differences(config["arguments"], argv) if config else []
    if differences:  # reusing or resuming it would report another experiment under these settings
        raise UserError(f"{out} holds a run with other settings ({'; '.join(differences)}): "
                        "use --force or another folder")
    if recorded is not None and recorded > epochs:
        raise UserError(f"{out} holds a {recorded}-epoch run, more than the {epochs} epochs asked for: "
                        "use --force or another folder")
    if recorded == epochs and finished_metrics(out) is not None:
        return None
    resume = not force and (out / "last.pt").exists()
    return [*argv, "--epochs", str(epochs), "--out", str(out), "--resume" if resume else "--force"]


def run_or_reuse(main, argv, out, epochs, force=False):
    """Run a task script's main(argv) for `epochs` into `out`, its printed output in out/log.txt,
    unless out holds that finished run (see planned_argv). Returns the run's metrics.

    reproduce.py and the studies build on this, so that stopping and restarting them loses no
    finished work. (metrics.json exists only while it describes the run in config.json: a resumed
    run removes it first.)
    """
    argv = planned_argv(argv, out, epochs, force)
    if argv is not None:
        make_folder(out, "run folder")
        with open_regular(out / "log.txt", "a") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            main(argv)
    return read_json(out / "metrics.json")
