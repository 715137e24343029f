import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from common.cli import UserError
from common.run_folder import lock, run_or_reuse
from conftest import CreatesFile, make_split
from test_train import run, tiny_main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def data(tmp_path):
    return make_split(tmp_path / "data")


def test_resume_refuses_a_checkpoint_that_would_run_code(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    planted = tmp_path / "pwned"
    state = torch.load(out / "last.pt", weights_only=True)
    state["history"] = CreatesFile(planted)
    torch.save(state, out / "last.pt")
    with pytest.raises(UserError, match="objects other than tensors and plain data.*--force"):
        run(data, out, "--epochs", "2", "--resume")
    assert not planted.exists()


def test_our_own_checkpoint_loads_as_plain_data(data, tmp_path):
    run(data, tmp_path / "out", "--epochs", "1")
    state = torch.load(tmp_path / "out" / "last.pt", weights_only=True)  # what --resume does
    assert state["epoch"] == 1 and state["key"]["--seed"] == 0


def test_truncated_checkpoint_says_corrupt_and_how_to_start_over(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    checkpoint = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(checkpoint[:len(checkpoint) // 2])
    with pytest.raises(UserError, match=r"last\.pt is corrupt or unreadable.*start over with --force"):
        run(data, out, "--epochs", "2", "--resume")
    run(data, out, "--epochs", "2", "--force")  # the advice works
    assert json.loads((out / "config.json").read_text())["arguments"]["epochs"] == 2


@pytest.mark.parametrize("option, value", [("--seed", "-1"), ("--seed", str(2 ** 32)), ("--lr", "inf"),
                                           ("--lr", "nan"), ("--gamma", "inf"), ("--gamma", "nan"),
                                           ("--batch-size", "0")])
def test_out_of_range_options_are_refused_before_anything_is_created(data, tmp_path, option, value):
    with pytest.raises(UserError, match=f"{option} {value} is out of range"):
        run(data, tmp_path / "out", option, value)
    assert not (tmp_path / "out").exists()


def test_largest_seed_is_accepted(data, tmp_path):
    run(data, tmp_path / "out", "--epochs", "1", "--seed", str(2 ** 32 - 1))
    assert (tmp_path / "out" / "metrics.json").exists()


def test_resume_names_every_setting_that_differs(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    config = (out / "config.json").read_text()
    with pytest.raises(UserError, match=r"--lr 0\.05 in the checkpoint, 0\.01 now; --seed 0 in the checkpoint, 3 now"):
        run(data, out, "--epochs", "2", "--resume", "--lr", "0.01", "--seed", "3")
    assert (out / "config.json").read_text() == config  # the refused run recorded nothing


def test_resume_refuses_fewer_epochs_than_already_trained(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--epochs", "3")
    with pytest.raises(UserError, match="trained 3 epochs already, more than --epochs 2"):
        run(data, out, "--epochs", "2", "--resume")


def test_resume_refuses_a_re_split_with_other_classes_or_images(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    for split in ("train", "validation", "test"):
        (data / split / "red").rename(data / split / "purple")
    with pytest.raises(UserError, match=r"classes \['blue', 'green', 'red'\] in the checkpoint, "
                                        r"\['blue', 'green', 'purple'\] now"):
        run(data, out, "--epochs", "2", "--resume")
    for split in ("train", "validation", "test"):
        (data / split / "purple").rename(data / split / "red")
    (data / "train" / "red" / "0.png").rename(data / "test" / "red" / "moved.png")  # same classes, other split
    with pytest.raises(UserError, match=r"data \(image content\)"):
        run(data, out, "--epochs", "2", "--resume")


def test_resume_accepts_the_same_images_in_a_moved_folder(data, tmp_path):
    whole = run(data, tmp_path / "whole", "--epochs", "2")
    run(data, tmp_path / "out", "--epochs", "1")
    moved = shutil.move(data, tmp_path / "moved")
    assert run(moved, tmp_path / "out", "--epochs", "2", "--resume") == whole


def test_out_inside_the_data_is_refused_before_anything_is_created(data, tmp_path):
    for inside in (data / "train" / "red" / "results", data / "results", data):
        with pytest.raises(UserError, match="is inside .*read as images"):
            run(data, inside)
    assert sorted(p.name for p in (data / "train").iterdir()) == ["blue", "green", "red"]
    assert not (data / "results").exists()


def test_a_run_folder_in_use_is_refused(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with lock(out, "--out"):
        with pytest.raises(UserError, match="in use by another run"):
            run(data, out, "--epochs", "1")
    assert not (out / "metrics.json").exists()
    run(data, out, "--epochs", "1")  # once released, the folder is free again
    assert (out / "metrics.json").exists()


def test_a_second_process_is_refused_while_a_run_holds_the_folder(data, tmp_path):
    """Two real processes: the lock is the kernel's, not a flag in this one."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from common.run_folder import lock
        with lock({str(out)!r}, "--out"):
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = subprocess.run([sys.executable, "task2_shallow.py", "--data", str(data), "--out", str(out),
                               "--epochs", "1"], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "cache")})
        assert done.returncode == 2 and done.stderr.startswith("error: ") and "in use by another run" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "config.json").exists()


def test_run_or_reuse_reuses_extends_and_refuses_shorter(data, tmp_path):
    whole = run_or_reuse(tiny_main, ["--data", str(data)], tmp_path / "whole", epochs=3)
    out = tmp_path / "grown"
    run_or_reuse(tiny_main, ["--data", str(data)], out, epochs=1)
    finished = (out / "metrics.json").stat().st_mtime_ns
    run_or_reuse(tiny_main, ["--data", str(data)], out, epochs=1)  # finished: reused, not retrained
    assert (out / "metrics.json").stat().st_mtime_ns == finished
    assert run_or_reuse(tiny_main, ["--data", str(data)], out, epochs=3) == whole  # extended by resuming
    assert "resuming" in (out / "log.txt").read_text()
    with pytest.raises(UserError, match="holds a 3-epoch run, more than the 2 epochs"):
        run_or_reuse(tiny_main, ["--data", str(data)], out, epochs=2)
    (out / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json is unreadable.*--force"):
        run_or_reuse(tiny_main, ["--data", str(data)], out, epochs=3)
