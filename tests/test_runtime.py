import os
import subprocess
import sys

import pytest
import torch
from torch._inductor.exc import InductorError

from common import runtime
from common.cli import UserError
from common.runtime import keep_freed_memory
from conftest import REPO


def test_compile_off_never_compiles():
    assert runtime.pick_compile("off", torch.device("cpu")) is False


@pytest.mark.parametrize("cxx", ["/no/such/compiler", "/bin/false"])  # missing, or there but failing
def test_a_compiler_that_does_not_run_falls_back_to_eager_with_one_warning_or_refuses_on(monkeypatch, capsys, cxx):
    monkeypatch.setenv("CXX", cxx)
    assert runtime.pick_compile("auto", torch.device("cpu")) is False
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"needs a C++ compiler on the CPU, and {cxx} ($CXX) does not run" in err
    assert "eager" in err
    with pytest.raises(UserError, match="--compile on: .*C\\+\\+ compiler.*--compile off"):
        runtime.pick_compile("on", torch.device("cpu"))


def test_compile_auto_uses_it_where_a_compiler_runs(monkeypatch):
    monkeypatch.setattr(runtime, "compiler_runs", lambda compiler: True)
    assert runtime.pick_compile("auto", torch.device("cpu")) is True


def failing_compile(model):
    def compiled(*inputs):
        raise InductorError(RuntimeError("C++ compile error\nand its long log"), None)
    return compiled


def test_a_compilation_that_fails_at_the_first_call_falls_back_to_eager_or_refuses_on(monkeypatch, capsys):
    monkeypatch.setattr(torch, "compile", failing_compile)
    model, errors = torch.nn.Linear(2, 1), []
    forward = runtime.CompiledOrEager(model, "auto", errors.append)
    x = torch.ones(3, 2)
    assert torch.equal(forward(x), model(x)) and torch.equal(forward(x), model(x))
    assert errors == ["RuntimeError: C++ compile error"]  # recorded once, one line
    assert capsys.readouterr().err.count("warning: torch.compile failed (RuntimeError: C++ compile error)") == 1
    with pytest.raises(UserError, match="--compile on: torch.compile failed .*; use --compile off"):
        runtime.CompiledOrEager(model, "on", errors.append)(x)


@pytest.mark.slow
def test_a_compile_cache_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    done = subprocess.run([sys.executable, "-c", "import common.train"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "file")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (f"error: torch cannot use {tmp_path / 'file'} as its compile cache folder (File exists): "
                           "point TORCHINDUCTOR_CACHE_DIR at a writable folder, or unset it\n")


def test_allocator_tuning_is_set_on_glibc_and_harmless_elsewhere(monkeypatch):
    import ctypes
    import platform
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")

    def no_libc(*args, **kwargs):
        raise OSError("no such library")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert keep_freed_memory() is False


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_is_bf16_only_on_amx_cpus_and_not_for_models_it_slows(monkeypatch, amx):
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: amx)
    cpu = torch.device("cpu")
    assert runtime.pick_precision("auto", cpu) == ("bf16" if amx else "fp32")
    assert runtime.pick_precision("auto", cpu, cpu_bf16=False) == "fp32"
    assert runtime.pick_precision("bf16", cpu, cpu_bf16=False) == "bf16"  # an explicit choice is kept


def test_a_gpu_index_the_machine_lacks_is_one_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert runtime.pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UserError, match="--device cuda:9: this machine has 1 GPU"):
        runtime.pick_device("cuda:9")
