"""Command-line plumbing shared by every script: process set-up, and one clear line on bad input."""
import ctypes
import ctypes.util
import importlib
import sys

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line and exit code 2."""
    exit_code = 2


def import_compile_stack():
    """Import torch._dynamo (torchvision imports it too) before anything else, where its one failure
    of the environment can be said in one line: on import it creates torch's compile cache folder
    ($TORCHINDUCTOR_CACHE_DIR), and a file in that place raised FileExistsError deep in torchvision."""
    try:
        importlib.import_module("torch._dynamo")
    except OSError as e:
        print(f"error: torch cannot use {e.filename or '?'} as its compile cache folder ({e.strerror or e}): "
              "point TORCHINDUCTOR_CACHE_DIR at a writable folder, or unset it", file=sys.stderr)
        sys.exit(2)


def keep_freed_memory():
    """Let glibc keep large freed buffers for reuse instead of unmapping them (True where it did).

    By default every activation and gradient buffer above 32 MiB is mmap'ed and munmap'ed each
    step, so the kernel zeroes fresh pages every time: a third of a run was system time. Elsewhere
    (macOS, musl) there is no mallopt and nothing changes.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30) and mallopt(M_TRIM_THRESHOLD, 2 << 30))


def flush_denormals():
    """Compute with floats below 2**-126 as zero (FTZ/DAZ), in this thread and the threads it starts
    later (threads already running keep their mode, so call it before torch's first parallel op).

    Late in a run, as the fit tightens, Adam's moment estimates and the far tails of softmax decay
    into that range, where x86 CPUs take a slow microcode path for every operation on them: without
    this, task 2's last 20 epochs took 1.3x (fp32) to 1.5x (bf16) as long as its early ones
    (bench/bench_speed.py). Values that small change no printed digit. True where the CPU supports it.
    """
    return torch.set_flush_denormal(True)


def run_main(main):
    """Call main(); turn a UserError into `error: ...` on stderr and a non-zero exit."""
    keep_freed_memory()
    flush_denormals()
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid UTF-8 prints escaped, not as a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # the file system said no where no check of ours did (a name too long, a loop, ...)
        print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        print("error: another process of this torchrun job stopped; its error, if any, is above", file=sys.stderr)
        sys.exit(2)


def lost_peer(error):
    """True for the error a torchrun rank gets in a collective when another rank has exited."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return False
    return isinstance(error, getattr(dist, "DistError", ())) or "closed by peer" in str(error) or \
        "reset by peer" in str(error)
