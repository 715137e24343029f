"""The run folder: the checks made before anything is written, and the lock held while a run writes."""
import contextlib
import fcntl
import os
import re
from pathlib import Path

from common.errors import UserError
from common.paths import is_inside

# Everything a run writes into --out, but reproduce.py's log.txt.
# FINAL_FILES describe a finished run: gone while a resumed one trains.
FINAL_FILES = ("metrics.md", "metrics.json", "metrics.csv", "confusion.png", "confusion.csv",
               "test_predictions.csv", "architecture.md", "cluster_maps.png")
RUN_FILES = ("config.json", "history.csv", "loss.png", "accuracy.png", "last.pt", "best.pt", *FINAL_FILES)
EVENT_FILES = "events.out.tfevents.*"  # TensorBoard's (common/tensorboard_log.py): a resumed run adds one


def check_folder_writable(path, label):
    """Refuse a path that is a file or lies below no writable folder, without creating anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{label} {path} is a file, not a folder")
    existing = next(p for p in [path.absolute(), *path.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {label} {path} ({existing} is not a writable folder)")


def first_line(path, limit=400):
    """The first line of a regular file (at most `limit` bytes), or None: a folder, or a FIFO whose
    reading would wait forever, is no file of ours."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return f.readline(limit).decode("utf-8", "replace")


def foreign_entry(out, own, report, opens_report):
    """The first entry of `out` that its maker (reproduce.py, a study) did not write, or None: `own`
    maps each folder of out ("." for out itself) to a pattern of the names the maker writes there, and
    the `report` it writes (REPORT.md, study.md) counts as its own only where opens_report(its first
    line) holds, the name alone being a common one. Anything else would be replaced or mixed with ours."""
    for name, pattern in own.items():
        if (out / name).is_dir():
            entry = next((p for p in sorted((out / name).iterdir()) if not re.fullmatch(pattern, p.name)), None)
            if entry:
                return entry
    report = out / report
    return report if os.path.lexists(report) and not opens_report(first_line(report) or "") else None


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
    """Before training: --force removes the earlier run's files (its events too), --resume the final
    tables that no longer describe the run; temporary files of a killed writer go too (the lock is ours)."""
    for name in RUN_FILES if force else FINAL_FILES:
        (out / name).unlink(missing_ok=True)
    for events in out.glob(EVENT_FILES) if force else ():
        if not events.is_dir() or events.is_symlink():  # a folder of that name is not TensorBoard's: left alone
            events.unlink(missing_ok=True)
    for name in RUN_FILES:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def check_out(config, *image_folders):
    """Everything about the run folder (--out) that can be known before the data is loaded; creates nothing."""
    out = config.out
    for folder in image_folders:
        if is_inside(out, folder):
            raise UserError(f"--out {out} is inside {folder}: results there would be read as images")
    check_folder_writable(out, "--out")
    check_results(out, config.resume, config.force)
    if out.is_dir():
        with lock(out, "--out"):  # only a probe: fail now rather than after loading the data
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
