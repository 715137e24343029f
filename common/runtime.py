"""The process and where it computes: memory and denormal settings, device, numeric precision and
compilation, picked once per run and recorded."""
import contextlib
import ctypes
import ctypes.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch._dynamo.exc import BackendCompilerFailed

from common.errors import UserError

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("auto", "on", "off")


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


def cpu_has_amx():
    """True on x86 CPUs with AMX tiles, where bf16 matrix work is several times faster than fp32."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def cpu_flags():
    """The CPU features that explain a timing (AVX-512, bf16, AMX), for the benchmarks' and studies' printouts."""
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags) or "none of avx512/amx"


def pick_device(name="auto"):
    """CUDA, then Apple MPS, then CPU, unless the user named one."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name (try cpu, cuda, cuda:1, mps)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise UserError(f"--device {name}: no such device on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 and up")
    return device


def pick_precision(name, device, cpu_bf16=True):
    """bf16 autocast where the hardware runs it fast (AMX CPUs, bf16-capable GPUs), else fp32.

    cpu_bf16=False keeps a model that bf16 slows down on the CPU in fp32 under auto (task 3).
    """
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    if device.type == "cpu" and cpu_bf16 and cpu_has_amx():
        return "bf16"
    return "fp32"


def autocast(device, precision):
    """Context for forward passes: bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def inductor_compiler():
    """The C++ compiler torch.compile's CPU code generation runs: $CXX, else g++ (clang++ on macOS),
    as torch._inductor.config.cpp.cxx picks it."""
    return os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")


def compiler_runs(compiler):
    """True when `compiler --version` runs and succeeds, the test inductor itself makes."""
    try:
        subprocess.run([compiler, "--version"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def compile_unavailable(device):
    """Why torch.compile cannot run here, or None where it can."""
    if sys.platform == "win32":
        return "torch.compile's CPU code generation is not supported on Windows"
    if device.type not in ("cpu", "cuda"):
        return f"torch.compile does not support {device.type}"
    if device.type == "cpu" and not compiler_runs(inductor_compiler()):
        return (f"torch.compile needs a C++ compiler on the CPU, and {inductor_compiler()} "
                f"({'$CXX' if os.environ.get('CXX') else 'the default'}) does not run")
    try:
        import torch._inductor  # noqa: F401  (absent or broken on some platforms and Python versions)
    except Exception as e:
        return f"torch.compile is not available ({type(e).__name__}: {e})"
    return None


def pick_compile(mode, device):
    """--compile: auto compiles where torch.compile can run and falls back to eager with one warning."""
    if mode == "off":
        return False
    reason = compile_unavailable(device)
    if reason is None:
        # inductor's first C++ build warns that a CPU-only machine has no CUDA runtime: true, and no concern here
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        return True
    if mode == "on":
        raise UserError(f"--compile on: {reason}; use --compile off")
    print(f"warning: {reason}; training in eager mode (--compile off hides this warning)", file=sys.stderr)
    return False


class CompiledOrEager:
    """torch.compile(model), which compiles at its first call (and again for a new mode or shape);
    where compiling fails all the same (a compiler that breaks on real code, a full disk, ...), the
    model itself from then on. Under --compile auto that is one warning and `on_fallback(error)`
    (which records it); under --compile on, one error line."""

    def __init__(self, model, mode, on_fallback):
        self.model, self.compiled, self.mode, self.on_fallback = model, torch.compile(model), mode, on_fallback
        self.error = None

    def __call__(self, *inputs):
        if self.error is None:
            try:
                return self.compiled(*inputs)
            except BackendCompilerFailed as e:  # InductorError is one
                self.error = " ".join(str(e).split("\n")[0].split())[:300]
                if self.mode == "on":
                    raise UserError(f"--compile on: torch.compile failed ({self.error}); use --compile off") from None
                print(f"warning: torch.compile failed ({self.error}); training in eager mode "
                      "(--compile off hides this warning)", file=sys.stderr)
                self.on_fallback(self.error)
        return self.model(*inputs)
