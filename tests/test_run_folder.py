import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from common.cli import UserError
from common import distributed, run_folder
import common.train
from common.checkpoint import check_resumable, load_checkpoint, run_key
from common.paths import is_inside
from common.reuse import finished_metrics, read_config, run_or_reuse
from common.run_folder import lock
from conftest import REPO, CreatesFile, flip_byte_in_largest_tensor, start_test_run
from test_train import run, TINY, tiny_config


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


@pytest.mark.slow
def test_a_second_process_is_refused_while_a_run_holds_the_folder(data, tmp_path):
    """Two real processes: the lock is the kernel's, not a flag in this one."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from common.run_folder import lock
        with lock({str(out)!r}, "--out"):
            print("locked", flush=True)
            sys.stdin.read()  # held until the test is done with it, however long the other process takes
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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
    whole = run_or_reuse(TINY, tiny_config(data, tmp_path / "whole", 3))
    out = tmp_path / "grown"
    run_or_reuse(TINY, tiny_config(data, out, 1))
    finished = (out / "metrics.json").stat().st_mtime_ns
    run_or_reuse(TINY, tiny_config(data, out, 1))  # finished: reused, not retrained
    assert (out / "metrics.json").stat().st_mtime_ns == finished
    assert run_or_reuse(TINY, tiny_config(data, out, 3)) == whole  # extended by resuming
    assert "resuming" in (out / "log.txt").read_text()
    with pytest.raises(UserError, match="holds a 3-epoch run, more than the 2 epochs"):
        run_or_reuse(TINY, tiny_config(data, out, 2))
    (out / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json is unreadable.*--force"):
        run_or_reuse(TINY, tiny_config(data, out, 3))


def test_run_or_reuse_never_reuses_a_run_made_with_other_options(data, tmp_path):
    out = tmp_path / "run"
    first = run_or_reuse(TINY, tiny_config(data, out, 1, gamma=0.5, seed=3))
    assert run_or_reuse(TINY, tiny_config(data, out, 1, gamma=0.50, seed=3)) == first
    for name, value in (("gamma", 1.0), ("seed", 4), ("data", tmp_path)):
        settings = {"data": data, "gamma": 0.5, "seed": 3, name: value}
        with pytest.raises(UserError, match=f"holds a run with other settings \\(--{name} .* there, .* asked\\)"):
            run_or_reuse(TINY, tiny_config(out=out, epochs=2, **settings))  # neither reused nor resumed
    with pytest.raises(UserError, match=r"\(--gamma 0.5 there, 0.9 asked; --seed 3 there, 0 asked\): use --force"):
        run_or_reuse(TINY, tiny_config(data, out, 1))  # before: options left at their defaults went unseen
    assert json.loads((out / "config.json").read_text())["arguments"]["epochs"] == 1
    assert run_or_reuse(TINY, tiny_config(data, out, 1, gamma=1), force=True) != first


def test_out_holding_other_files_is_refused_unless_forced(data, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "metrics.md").write_text("my notes")
    with pytest.raises(UserError, match="already holds other files \\(e.g. metrics.md\\).*--force"):
        run(data, out, "--epochs", "1")
    assert (out / "metrics.md").read_text() == "my notes"
    run(data, out, "--epochs", "1", "--force")  # asked for: replaced
    assert (out / "metrics.md").read_text() != "my notes"


@contextlib.contextmanager
def ctrl_c_at_epoch(n):
    """Inside: training stops at the end of epoch n as Ctrl-C pressed twice does (SystemExit 130)."""
    print_epoch = common.train.print_epoch

    def interrupted_after(row, epochs):
        print_epoch(row, epochs)
        if row["epoch"] == n:
            raise KeyboardInterrupt
    common.train.print_epoch = interrupted_after
    try:
        with pytest.raises(SystemExit):
            yield
    finally:
        common.train.print_epoch = print_epoch


def test_an_interrupted_longer_run_is_not_reported_with_the_shorter_runs_metrics(data, tmp_path):
    whole = run_or_reuse(TINY, tiny_config(data, tmp_path / "whole", 3))
    out = tmp_path / "out"
    run_or_reuse(TINY, tiny_config(data, out, 1))
    with ctrl_c_at_epoch(2):
        run_or_reuse(TINY, tiny_config(data, out, 3))
    assert not (out / "metrics.json").exists()  # the 1-epoch table no longer describes the folder
    assert run_or_reuse(TINY, tiny_config(data, out, 3)) == whole


def test_a_failed_forced_run_leaves_no_table_of_the_earlier_run(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    with pytest.raises(UserError, match="training loss became"):
        run(data, out, "--epochs", "1", "--force", "--lr", "1e300")
    assert not (out / "metrics.json").exists() and not (out / "last.pt").exists()
    assert json.loads((out / "config.json").read_text())["arguments"]["lr"] == 1e300


def test_a_run_stopped_before_its_first_checkpoint_says_to_use_force(data, tmp_path):
    out = tmp_path / "out"
    with ctrl_c_at_epoch(1):
        run(data, out, "--epochs", "3")
    with pytest.raises(UserError, match="stopped before its first checkpoint: --force starts it again"):
        run(data, out, "--epochs", "3")
    with pytest.raises(UserError, match="holds no checkpoint.*--force starts it again"):
        run(data, out, "--epochs", "3", "--resume")


def test_temporary_files_of_a_killed_writer_are_removed(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    (out / ".last.pt.99999.tmp").write_bytes(b"x" * 100)  # what SIGKILL during torch.save leaves
    run(data, out, "--epochs", "2", "--resume")
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("doctor, message", [
    (lambda s: s.update(history=[1, 2]), "not a checkpoint of this project"),
    (lambda s: s.update(best={}), "not a checkpoint of this project"),
    (lambda s: s.update(best={"loss": "x"}), "not a checkpoint of this project"),
    (lambda s: s.update(epoch=-5), "not a checkpoint of this project"),
    (lambda s: s["scheduler"].update(gamma=0.5), "does not match --lr 0.05 and --gamma 0.9"),
    (lambda s: s["scheduler"].update(gamma="x"), "does not match --lr 0.05 and --gamma 0.9"),
    (lambda s: s["optimizer"]["param_groups"][0].update(lr="x"), "does not match --lr"),
    (lambda s: s["optimizer"]["param_groups"][0].update(betas=(2.0, "x")), "does not match --lr"),
    (lambda s: s["optimizer"]["param_groups"][0].update(eps=torch.ones(3)), "does not match --lr"),
    (lambda s: s["best"].update(model={"w": torch.zeros(2)}), "does not fit this model"),
])
def test_a_checkpoint_with_doctored_plain_data_is_one_error(data, tmp_path, doctor, message):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    state = torch.load(out / "last.pt", weights_only=True)
    doctor(state)
    torch.save(state, out / "last.pt")
    with pytest.raises(UserError, match=message):
        run(data, out, "--epochs", "2", "--resume")


def test_a_fifo_in_place_of_the_checkpoint_is_refused_not_waited_on(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    (out / "last.pt").unlink()
    os.mkfifo(out / "last.pt")
    with pytest.raises(UserError, match="last.pt is not a regular file"):
        run(data, out, "--epochs", "2", "--resume")


def test_weights_made_nan_by_an_epochs_last_step_are_refused_not_reported(data, tmp_path):
    out = tmp_path / "out"  # batch size above the split's size: one step per epoch, so it is also the last
    with pytest.raises(UserError, match="validation loss became nan in epoch 1"):
        run(data, out, "--epochs", "1", "--lr", "1e30", "--batch-size", "1000")
    assert not (out / "metrics.json").exists()


def test_huge_batch_size_is_refused(data, tmp_path):
    with pytest.raises(UserError, match="--batch-size 100000000000000000000 is out of range"):
        run(data, tmp_path / "out", "--batch-size", str(10 ** 20))


def test_paths_through_a_symlink_loop_are_compared_without_error(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert not is_inside(tmp_path / "a" / "x", tmp_path / "data")
    assert is_inside(tmp_path / "data" / "x", tmp_path / "data")
    assert not is_inside(tmp_path / "data2", tmp_path / "data")


def test_out_inside_the_demo_images_is_refused_when_data_is_the_demo_split(data, tmp_path, monkeypatch):
    import common.run
    demo_images = tmp_path / "demo_images"
    demo_images.mkdir()
    monkeypatch.setattr(common.run, "default_data", lambda: data)
    monkeypatch.setattr(common.run, "DEMO_IMAGES", demo_images)
    with pytest.raises(UserError, match="is inside .*demo_images"):
        start_test_run(["--out", str(demo_images / "zz")], epochs=1)
    assert list(demo_images.iterdir()) == []


def test_a_fifo_in_place_of_metrics_json_counts_as_missing_not_a_wait(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    assert finished_metrics(out) is not None
    (out / "metrics.json").unlink()
    os.mkfifo(out / "metrics.json")
    assert finished_metrics(out) is None  # the run is then evaluated again, as with a damaged file


def test_json_nested_too_deeply_is_one_error_or_missing(data, tmp_path):
    out = tmp_path / "run"
    run_or_reuse(TINY, tiny_config(data, out, 1))
    deep = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError
    (out / "metrics.json").write_text(deep)
    assert finished_metrics(out) is None
    (out / "config.json").write_text(deep)
    with pytest.raises(UserError, match="config.json is unreadable.*--force"):
        read_config(out)
    with pytest.raises(UserError, match="config.json is unreadable.*--force"):
        run_or_reuse(TINY, tiny_config(data, out, 1))


@pytest.mark.slow
def test_a_fifo_in_place_of_the_log_is_refused_before_the_run_not_waited_on(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "log.txt")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from common.reuse import run_or_reuse
        from common.task import Task
        try:
            task = Task("test", "test", 1, 1, build_model=None)
            run_or_reuse(task, task.config(out=Path({str(out)!r})))
        except OSError as e:
            print(e)
        """)], capture_output=True, text=True, timeout=60)  # before: open() waited for a reader forever
    assert done.stdout == f"{out / 'log.txt'} is not a regular file (a FIFO, device or folder)\n", done.stderr


def test_a_checkpoint_with_a_flipped_byte_in_a_tensor_is_refused(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    flip_byte_in_largest_tensor(out / "last.pt")
    torch.load(out / "last.pt", weights_only=True)  # loads as if whole: only the CRC-32s tell
    with pytest.raises(UserError, match=r"last\.pt is corrupt or unreadable \(.* fails its CRC-32 check\); start over"):
        run(data, out, "--epochs", "2", "--resume")


def test_a_checkpoint_of_one_process_does_not_resume_under_torchrun(data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run(data, out, "--epochs", "1")
    state = load_checkpoint(out / "last.pt")
    r = start_test_run(["--data", str(data), "--out", str(out), "--lr", "0.05", "--precision", "fp32", "--resume"])
    check_resumable(state, r.config, run_key(r, {}))  # the same settings in one process
    monkeypatch.setattr(distributed, "world", lambda: 2)
    with pytest.raises(UserError, match="torchrun processes unset in the checkpoint, 2 now"):
        check_resumable(state, r.config, run_key(r, {}))


def test_foreign_entry_is_what_the_maker_writes_nowhere(tmp_path):
    own = {".": "runs|report.md", "runs": r"seed\d+"}
    (tmp_path / "runs" / "seed0").mkdir(parents=True)
    assert run_folder.foreign_entry(tmp_path, own, "report.md", lambda line: line == "# ours\n") is None
    (tmp_path / "report.md").write_text("# ours\nmore\n")
    assert run_folder.foreign_entry(tmp_path, own, "report.md", lambda line: line == "# ours\n") is None
    (tmp_path / "report.md").write_text("# my notes\n")  # the name alone does not make it ours
    assert run_folder.foreign_entry(tmp_path, own, "report.md", lambda line: line == "# ours\n") == tmp_path / "report.md"
    (tmp_path / "runs" / "notes.txt").write_text("")
    assert run_folder.foreign_entry(tmp_path, own, "report.md", lambda line: True) == tmp_path / "runs" / "notes.txt"
