"""Every script's entry point: process set-up, stop signals, and one clear line on bad input."""
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

import torch

from common.errors import UserError
from common.files import atomic_write
from common.runtime import flush_denormals, keep_freed_memory


# The environment variable by which a parent process (common/runs.py) names the file where its child
# script says why it failed: {"exit_code": N, "error": "..."}, data rather than a line of its log.
OUTCOME = "REPRO_OUTCOME"


def fail(error, exit_code):
    """One `error: ...` line on stderr, the same in the outcome file where a parent asked for one; exit."""
    print(f"error: {error}", file=sys.stderr)
    if os.environ.get(OUTCOME):
        atomic_write(Path(os.environ[OUTCOME]), json.dumps({"exit_code": exit_code, "error": error}))
    sys.exit(exit_code)


def run_main(main):
    """Call main(); turn a UserError into `error: ...` on stderr and a non-zero exit."""
    keep_freed_memory()
    flush_denormals()
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid UTF-8 prints escaped, not as a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        with signals_as_ctrl_c():
            main()
    except UserError as e:
        fail(str(e), e.exit_code)
    except OSError as e:  # the file system said no where no check of ours did (a name too long, a loop, ...)
        fail(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}", 2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        fail("another process of this torchrun job stopped; its error, if any, is above", 2)


LIKE_CTRL_C = (signal.SIGTERM, signal.SIGHUP)  # a scheduler's kill, a closed terminal: both stop like Ctrl-C


@contextlib.contextmanager
def signals_as_ctrl_c():
    """SIGTERM and SIGHUP do what Ctrl-C does at that moment (inside a run: stop after a checkpoint;
    elsewhere KeyboardInterrupt: one line, exit 130, and reproduce.py stops its runs under way): ending
    a script never leaves a run training unattended. A signal ignored when we started (nohup) stays ignored."""
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


def lost_peer(error):
    """True for the error a torchrun rank gets in a collective when another rank has exited."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return False
    return isinstance(error, getattr(dist, "DistError", ())) or "closed by peer" in str(error) or \
        "reset by peer" in str(error)
