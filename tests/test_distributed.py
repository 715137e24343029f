"""common/distributed.py: the task scripts under torchrun (2 CPU processes, gloo) against one process.

Every run says --device cpu: on a machine with one GPU, auto would send both ranks to CUDA, where
rank 1 finds no GPU of its own."""
import json
import os
import subprocess
import sys

import pytest

import common.distributed as distributed
import task1_efficientnet
from conftest import REPO
from test_train import run

SPLIT_COUNTS = (6, 2, 3)  # the data fixture's split: 18 / 6 / 9 images


def torchrun(script, *argv, cache):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / script), *argv]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "REPRO_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one_with_the_same_global_batch(data, tmp_path):
    # Task 1's head has no dropout, so two ranks must learn what one process learns. Batch 17 of 18
    # images leaves a last batch of 1: rank 1 then trains on a stand-in row weighed 0.
    argv = ["--data", str(data), "--no-pretrained", "--device", "cpu", "--precision", "fp32", "--epochs", "3",
            "--batch-size", "17", "--lr", "0.01"]
    stdout = torchrun("task1_efficientnet.py", *argv, "--out", str(tmp_path / "two"), cache=tmp_path / "cache2")
    assert stdout.count("| Testing |") == 1  # rank 0 alone prints the table
    task1_efficientnet.main([*argv, "--out", str(tmp_path / "one")])
    two, one = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("two", "one"))
    for split in one:
        assert two[split]["top1"] == one[split]["top1"] and two[split]["top3"] == one[split]["top3"]
        assert two[split]["loss"] == pytest.approx(one[split]["loss"], rel=1e-5)
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["split_sizes"] == {"train": 18, "validation": 6, "test": 9}
    assert config["processes"] == 2 and "; 2 processes on cpu; " in stdout  # recorded and shown


@pytest.mark.slow
def test_splits_smaller_than_the_ranks_and_batches_of_one(data, tmp_path):
    # Validation and test keep 1 image each: rank 1 evaluates nothing; with --batch-size 1 it only
    # ever trains on stand-in rows, and computes no features of its own.
    for split in ("validation", "test"):
        for image in sorted((data / split).rglob("*.png"))[1:]:
            image.unlink()
    argv = ["--data", str(data), "--no-pretrained", "--device", "cpu", "--precision", "fp32", "--epochs", "2",
            "--batch-size", "1"]
    torchrun("task1_efficientnet.py", *argv, "--out", str(tmp_path / "two"), cache=tmp_path / "cache2")
    task1_efficientnet.main([*argv, "--out", str(tmp_path / "one")])
    two, one = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("two", "one"))
    assert two["test"]["top1"] == one["test"]["top1"]
    assert two["validation"]["loss"] == pytest.approx(one["validation"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_an_error_on_rank_0_is_one_line_on_each_rank(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # a run's results: refused without --force
    # torchrun stops the other ranks as soon as it sees rank 0 exit (every 0.1 s by default): rank 1
    # would be killed before it reaches the collective where it learns why. Checking every 5 s lets
    # rank 1 say its line however slowly it starts on a loaded machine.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--monitor-interval", "5",
               str(REPO / "task2_shallow.py"), "--data", str(data), "--out", str(out), "--device", "cpu"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode != 0
    assert "error: " in done.stderr and "already holds" in done.stderr
    assert "another process of this torchrun job stopped" in done.stderr  # rank 1, not a gloo traceback
    assert "[rank0]: Traceback" not in done.stderr and "[rank1]: Traceback" not in done.stderr


@pytest.mark.slow
def test_task3_trains_and_resumes_under_torchrun(data, tmp_path):
    argv = ["task3_netvlad.py", "--clusters", "4", "--data", str(data), "--out", str(tmp_path / "out"),
            "--batch-size", "5", "--compile", "off", "--device", "cpu"]
    torchrun(*argv, "--epochs", "1", cache=tmp_path / "cache")
    stdout = torchrun(*argv, "--epochs", "2", "--resume", cache=tmp_path / "cache")
    assert "resuming" in stdout and stdout.count("| Testing |") == 1
    history = (tmp_path / "out" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # a header and epochs 1 and 2, each written once


def test_a_rank_other_than_0_writes_and_prints_nothing(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "rank", lambda: 1)  # every collective is local: world() is still 1
    run(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert capsys.readouterr().out == ""


def test_one_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched() and distributed.world() == 1 and distributed.is_main()
    rows = list(range(5))
    assert distributed.shard(rows) == rows and distributed.sum_over_ranks(1.5, 2) == (1.5, 2)
