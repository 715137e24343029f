"""The run folder: the options every task shares, the checks made before anything is written,
the lock held while a run writes, the resume key and checkpoint, and reuse by reproduce.py."""
import contextlib
import fcntl
import json
import math
import os
import pickle
from pathlib import Path

import torch

from common.cli import UserError
from common.runtime import COMPILE_MODES, PRECISIONS

REPO = Path(__file__).resolve().parent.parent
RESULT_FILES = ("metrics.json", "last.pt", "config.json")
LOCK_FILE = ".lock"
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
                        help="auto = bf16 autocast on CPUs with AMX and bf16-capable GPUs, fp32 elsewhere; "
                             "fp32 turns mixed precision off (default: auto)")
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
    checks = (("epochs", args.epochs >= 1, "at least 1"), ("batch-size", args.batch_size >= 1, "at least 1"),
              ("lr", math.isfinite(args.lr) and args.lr > 0, "a positive finite number"),
              ("gamma", 0 < args.gamma <= 1, "a number in (0, 1]"),  # also false for nan
              ("seed", 0 <= args.seed < SEEDS, f"from 0 to {SEEDS - 1}"))
    for name, ok, expected in checks:
        if not ok:
            raise UserError(f"--{name} {getattr(args, name.replace('-', '_'))} is out of range: give {expected}")
    if args.resume and args.force:
        raise UserError("--resume and --force contradict each other: pick one")


def is_inside(path, folder):
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


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
    if resume and not (out / "last.pt").exists():
        raise UserError(f"--resume: {out} holds no checkpoint (last.pt)")
    if not resume and not force and any((out / f).exists() for f in RESULT_FILES):
        raise UserError(f"{out} already holds a run: --resume continues it, --force replaces it, --out picks another folder")


def check_out(args, data_root):
    """Everything about --out that can be known before the data is loaded; creates nothing."""
    if is_inside(args.out, data_root):
        raise UserError(f"--out {args.out} is inside --data {data_root}: results there would be read as images")
    check_folder_writable(args.out, "--out")
    check_results(args.out, args.resume, args.force)
    if (args.out / LOCK_FILE).exists():
        with lock(args.out, "--out"):  # only a probe: fail now rather than after loading the data
            pass


@contextlib.contextmanager
def lock(folder, label):
    """Hold an exclusive lock on FOLDER/.lock, or refuse at once if another process holds it.

    flock is released by the kernel when the process ends, however it ends: no stale locks.
    """
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot write to {label} {folder}: {e.strerror or e}") from None
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
    """
    options = {f"--{name.replace('_', '-')}": str(value) if isinstance(value, Path) else value
               for name, value in vars(run.args).items() if name not in NOT_KEYED}  # plain data only
    return {"task": run.task, **options, "--precision": run.precision, "classes": list(run.data.classes),
            "data (image content)": run.data.fingerprint(), **run.identity}


def key_differences(saved, now):
    names = [*saved, *(n for n in now if n not in saved)]
    return [f"{name} {saved.get(name, 'unset')} in the checkpoint, {now.get(name, 'unset')} now"
            for name in names if saved.get(name) != now.get(name)]


CHECKPOINT_TYPES = {"epoch": int, "key": dict, "model": dict, "optimizer": dict, "scheduler": dict,
                    "rng": torch.Tensor, "shuffle_rng": torch.Tensor, "history": list, "best": dict}


def load_checkpoint(path, device):
    """last.pt as plain data: weights_only refuses any pickled object that could run code."""
    start_over = f"start over with --force (it replaces {path.parent})"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"--resume: {path} holds objects other than tensors and plain data, so it is not a "
                        f"checkpoint of this project and was not loaded; {start_over}") from None
    except Exception as e:  # truncated or garbled files raise RuntimeError, EOFError, OSError, ...
        raise UserError(f"--resume: {path} is corrupt or unreadable ({type(e).__name__}); {start_over}") from None
    if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in CHECKPOINT_TYPES.items()):
        raise UserError(f"--resume: {path} is not a checkpoint of this project; {start_over}")
    return state


def check_resumable(state, run):
    differences = key_differences(state["key"], run_key(run))
    if differences:
        raise UserError(f"--resume: {run.out} was made with other settings: {'; '.join(differences)}")
    if state["epoch"] > run.args.epochs:
        raise UserError(f"--resume: {run.out} has trained {state['epoch']} epochs already, more than --epochs "
                        f"{run.args.epochs}: give --epochs {state['epoch']} or more, or --force to start over")


# --- reuse ----------------------------------------------------------------------------------

def recorded_epochs(out):
    try:
        return int(json.loads((out / "config.json").read_text())["arguments"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{out / 'config.json'} is unreadable or was not written by this project: "
                        "use --force to train that run again, or another folder") from None


def run_or_reuse(main, argv, out, epochs, force=False):
    """Run a task script's main(argv) for `epochs` into `out`, its printed output in out/log.txt.

    A finished run of as many epochs is reused; a shorter or interrupted one continues from its
    checkpoint; `force` starts afresh. Returns the run's metrics. reproduce.py and the NetVLAD
    study build on this, so that stopping and restarting them loses no finished work.
    """
    recorded = None if force or not (out / "config.json").exists() else recorded_epochs(out)
    if recorded is not None and recorded > epochs:
        raise UserError(f"{out} holds a {recorded}-epoch run, more than the {epochs} epochs asked for: "
                        "use --force or another folder")
    if recorded == epochs and (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    resume = not force and (out / "last.pt").exists()
    argv = [*argv, "--epochs", str(epochs), "--out", str(out), "--resume" if resume else "--force"]
    make_folder(out, "run folder")
    with open(out / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        main(argv)
    return json.loads((out / "metrics.json").read_text())
