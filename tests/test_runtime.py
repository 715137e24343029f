import pytest
import torch

from common import runtime
from common.cli import UserError, keep_freed_memory


def test_compile_off_never_compiles():
    assert runtime.pick_compile("off", torch.device("cpu")) is False


def test_no_compiler_falls_back_to_eager_with_one_warning_or_refuses_on(monkeypatch, capsys):
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    assert runtime.pick_compile("auto", torch.device("cpu")) is False
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "needs a C++ compiler" in err and "eager" in err
    with pytest.raises(UserError, match="--compile on: .*C\\+\\+ compiler.*--compile off"):
        runtime.pick_compile("on", torch.device("cpu"))


def test_compile_auto_uses_it_where_a_compiler_exists(monkeypatch):
    monkeypatch.setattr(runtime.shutil, "which", lambda name: "/usr/bin/g++")
    assert runtime.pick_compile("auto", torch.device("cpu")) is True


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
