"""Shared test helpers: the repository root, tiny image folders made on the fly, a private cache per
test, and a script's exit code and output."""
import signal
import socket
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import common.cache  # noqa: E402
from common.cli import run_main  # noqa: E402
from common.options import parse_run_config  # noqa: E402
from common.run import start_run  # noqa: E402
from common.task import Task  # noqa: E402

COLORS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
SPLIT_COUNTS = (6, 2, 2)  # images per class in train, validation and test


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(common.cache, "CACHE_DIR", tmp_path / "cache")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, and empty torch hub and Hugging Face caches in tmp_path."""
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "huggingface"))
    return tmp_path / "torch" / "hub" / "checkpoints"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def with_signals(command, ignored=()):
    """command, started with every stop signal at its default but those `ignored`, whatever the test
    suite inherited (nohup ignores SIGHUP, a background job SIGINT): a test sets up the state it checks.
    A signal's disposition, default or ignored, survives exec; a handler would not."""
    setup = ("import os, signal, sys\n"
             f"for s in {[int(s) for s in STOP_SIGNALS]}: signal.signal(s, signal.SIG_DFL)\n"
             f"for s in {[int(s) for s in ignored]}: signal.signal(s, signal.SIG_IGN)\n"
             "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", setup, *map(str, command)]


@pytest.fixture
def default_signals():
    """This process's stop signals as a plain interactive start leaves them (Ctrl-C raising
    KeyboardInterrupt, SIGTERM and SIGHUP at their default), restored after the test."""
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def make_image(path, color, seed, size=24):
    """A solid colour with mild noise: trivially separable by colour, yet no two files alike."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_split(root, counts=SPLIT_COUNTS, colors=COLORS):
    """root/{train,validation,test}/<colour>/*.png with the given number of images per class."""
    seed = 0
    for split, n in zip(("train", "validation", "test"), counts):
        for name, color in colors.items():
            for i in range(n):
                seed += 1
                make_image(root / split / name / f"{i}.png", color, seed)
    return root


@pytest.fixture
def data(tmp_path, request):
    """A split in tmp_path/data, with the test module's SPLIT_COUNTS where it sets its own."""
    return make_split(tmp_path / "data", counts=getattr(request.module, "SPLIT_COUNTS", SPLIT_COUNTS))


def exit_code_and_output(main, capsys):
    """Runs main as a script does (run_main), where it must exit: its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as exit:
        run_main(main)
    out, err = capsys.readouterr()
    return exit.value.code, out, err


class CreatesFile:
    """Pickled, it creates a file when unpickled: a stand-in for a crafted file that runs os.system."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def flip_byte_in_largest_tensor(checkpoint):
    """Flip one bit in the middle of the largest tensor's bytes inside a torch.save zip archive, as a
    failing disk or a bad copy would: the file still loads, with one weight changed."""
    import struct
    import zipfile
    with zipfile.ZipFile(checkpoint) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    with open(checkpoint, "r+b") as f:
        f.seek(member.header_offset + 26)  # the local header's name and extra-field lengths
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        f.seek(member.header_offset + 30 + name_length + extra_length + member.file_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([byte ^ 0x10]))


def start_test_run(argv, epochs=4, batch_size=5, compiles=False):
    """start_run for a task named "test" with these defaults, from its command line (the model is the caller's)."""
    return start_run(parse_run_config(Task("test", "test", epochs, batch_size, build_model=None, compiles=compiles), argv))
