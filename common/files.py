"""Files written whole or not at all, and read only where they are regular files: every file a run,
a split or the report writes goes through here."""
import contextlib
import json
import os
import re
import stat
from pathlib import Path

import torch

from common.errors import UserError


class NotRegularFile(OSError, UserError):
    """A FIFO, device or folder where a file of ours should be: an OSError to the readers that treat
    an unreadable file as missing or damaged, one error line (a UserError) to everyone else."""


OPEN_FLAGS = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}


def open_regular(path, mode="r", **kwargs):
    """open(), for regular files only, and without waiting: opening a FIFO waits for its other end
    forever, and a device may never end. Every reader and writer of a run's or a split's files uses it."""
    with contextlib.suppress(FileNotFoundError):  # a new file is made by the open
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise NotRegularFile(f"{path} is not a regular file (a FIFO, device or folder)")
    fd = os.open(path, OPEN_FLAGS[mode.strip("bt")] | os.O_NONBLOCK, 0o666)  # no wait, even if it changed since
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(f"{path} is not a regular file (a FIFO, device or folder)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode, **kwargs)


def temp_path(path):
    """A temporary name beside `path`: os.replace from it is atomic on the same file system."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary name beside `path`, then move it over `path` in one step.

    A crash leaves either the old file or the new one, never half; a failed write (a full
    disk, a read-only folder) removes the temporary file and becomes one UserError.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            reason = e.strerror or str(e)
        else:  # torch's writer reports a full disk only as a position mismatch
            reason = f"is the disk full? ({str(e).splitlines()[0][:200]})"
        raise UserError(f"cannot write {path}: {reason}") from None


def atomic_write(path, data):
    """Write text (UTF-8; a file name that is not valid UTF-8 keeps its own bytes) or bytes."""
    with replacing(path) as tmp, open(tmp, "wb") as f:  # never opens `path` itself: a FIFO there is replaced
        f.write(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)


def atomic_files(*names):
    """A pattern for these file names and the temporary .NAME.PID.tmp beside each that an atomic
    write (temp_path) killed midway leaves."""
    names = "|".join(map(re.escape, names))
    return rf"{names}|\.(?:{names})\.\d+\.tmp"


def atomic_torch_save(obj, path):
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def read_json(file):
    """A file's JSON; an OSError where it is missing or no regular file (a FIFO would be waited on forever)."""
    with open_regular(file) as f:
        return json.load(f)
