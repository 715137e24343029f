"""common/files.py: a write is whole or not at all, one error line on a full disk, and no file of
ours is ever opened where it is a FIFO, device or folder."""
import errno
import io
import os
import threading
from pathlib import Path

import pytest
import torch

from common import files
from common.cli import UserError


def test_a_full_disk_is_one_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    def fill_disk(obj, f):
        Path(f).write_bytes(b"x" * 1000)  # part of the file got written, then the disk was full
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    (tmp_path / "best.pt").write_bytes(b"earlier")
    monkeypatch.setattr(torch, "save", fill_disk)
    with pytest.raises(UserError, match=r"cannot write .*best\.pt: is the disk full\? \(PytorchStreamWriter failed"):
        files.atomic_torch_save({"w": torch.zeros(3)}, tmp_path / "best.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert (tmp_path / "best.pt").read_bytes() == b"earlier"  # the old file is intact


def test_a_failed_text_write_is_one_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    class FullDisk(io.FileIO):
        def write(self, data):
            super().write(data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "open", lambda path, mode: FullDisk(path, mode), raising=False)
    with pytest.raises(UserError, match=r"cannot write .*metrics\.md: No space left on device"):
        files.atomic_write(tmp_path / "metrics.md", "table")
    assert list(tmp_path.iterdir()) == []


def finishes_within(seconds, call):
    """call()'s exception, or None; fails the test where call() is still waiting after `seconds` (a
    thread: an open() that waits on a FIFO cannot be interrupted, and the test must not hang)."""
    caught = []

    def target():
        try:
            call()
        except BaseException as e:
            caught.append(e)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "still waiting"
    return caught[0] if caught else None


@pytest.mark.parametrize("mode", ["r", "a", "w", "rb"])
@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir])
def test_open_regular_refuses_a_fifo_or_folder_at_once(tmp_path, mode, make):
    make(tmp_path / "log.txt")
    error = finishes_within(10, lambda: files.open_regular(tmp_path / "log.txt", mode))
    assert isinstance(error, files.NotRegularFile) and isinstance(error, UserError) and isinstance(error, OSError)
    assert str(error) == f"{tmp_path / 'log.txt'} is not a regular file (a FIFO, device or folder)"


def test_open_regular_opens_and_creates_regular_files(tmp_path):
    with files.open_regular(tmp_path / "log.txt", "a") as f:
        f.write("one\n")
    with files.open_regular(tmp_path / "log.txt", "a") as f:
        f.write("two\n")
    with files.open_regular(tmp_path / "log.txt") as f:
        assert f.read() == "one\ntwo\n"
