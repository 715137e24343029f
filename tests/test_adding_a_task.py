"""docs/adding-a-task.md: its example script, copied into a copy of the repository with no other
change, trains, runs under reproduce.py and predicts."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from common.paths import REPO
from conftest import COLORS, make_image, make_split

pytestmark = pytest.mark.slow


def example_script():
    """The document's first fenced python block."""
    text = (REPO / "docs" / "adding-a-task.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def run(repo, script, *argv, cache):
    done = subprocess.run([sys.executable, script, *map(str, argv)], cwd=repo, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "REPRO_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_the_documented_example_task_is_one_new_file(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".git", ".venv*", ".cache", "results", "data",
                                                              "__pycache__", ".pytest_cache"))
    (repo / "task4_example.py").write_text(example_script())
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
