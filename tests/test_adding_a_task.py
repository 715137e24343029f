"""docs/adding-a-task.md: its example script, copied into a copy of the repository with no other
change, trains, runs under reproduce.py and predicts; its backbone example, a registry entry and a
thin script, trains and predicts."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torchvision

from common.paths import REPO
from conftest import COLORS, make_image, make_split

pytestmark = pytest.mark.slow


def examples():
    """The document's fenced python blocks: the example task, then the backbone's entry and script."""
    text = (REPO / "docs" / "adding-a-task.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def copy_of_repository(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".git", ".venv*", ".cache", "results", "data",
                                                              "__pycache__", ".pytest_cache"))
    return repo


def run(repo, script, *argv, cache):
    done = subprocess.run([sys.executable, script, *map(str, argv)], cwd=repo, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "REPRO_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_the_documented_example_task_is_one_new_file(tmp_path):
    repo = copy_of_repository(tmp_path)
    (repo / "task4_example.py").write_text(examples()[0])
    split, images, cache = make_split(tmp_path / "split"), tmp_path / "images", tmp_path / "cache"
    for i, (name, color) in enumerate(COLORS.items()):
        for j in range(8):
            make_image(images / name / f"{j}.png", color, 100 * i + j)

    run(repo, "task4_example.py", "--data", split, "--out", tmp_path / "run", "--epochs", "2", "--device", "cpu",
        "--width", "4", cache=cache)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "task4_example" and config["arguments"]["width"] == 4
    assert config["title"] == "Small ConvNet (width 4)" and (tmp_path / "run" / "metrics.json").exists()

    run(repo, "reproduce.py", "--tasks", "task4_example", "--data", images, "--out", tmp_path / "r",
        "--epochs", "1", "--seeds", "1", "--device", "cpu", cache=cache)
    report = (tmp_path / "r" / "REPORT.md").read_text()
    assert "## task4_example: Small ConvNet (width 16)" in report and "| Testing |" in report

    printed = run(repo, "predict.py", tmp_path / "run", split / "test", cache=cache)
    assert f"Small ConvNet (width 4) on {split / 'test'}: logloss" in printed


def test_the_documented_backbone_is_one_registry_entry_and_one_thin_script(tmp_path):
    repo = copy_of_repository(tmp_path)
    _, entry, script = examples()
    registry = repo / "common" / "backbones.py"
    registry.write_text(registry.read_text().replace("BACKBONES = {\n", "BACKBONES = {\n" + entry, 1))
    (repo / "task1_resnet18.py").write_text(script)
    split, cache, weights = make_split(tmp_path / "split"), tmp_path / "cache", tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # ImageNet's are not downloaded here

    run(repo, "task1_resnet18.py", "--data", split, "--out", tmp_path / "run", "--epochs", "2", "--device", "cpu",
        "--weights", weights, cache=cache)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "task1_resnet18" and config["backbone"] == "resnet18"
    assert config["title"] == "ResNet18, frozen, linear head" and config["weights"] == str(weights)

    printed = run(repo, "predict.py", tmp_path / "run", split / "test", cache=cache)
    assert f"ResNet18, frozen, linear head on {split / 'test'}: logloss" in printed
