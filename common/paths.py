"""Where things are: the repository, its demo images, the default splits and results; and whether
one path lies inside another."""
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT_NAME = re.compile(r"task\d+_\w+")  # a task script's module name (tasks.py finds them by it)
DEMO_IMAGES = REPO / "demo_data" / "images"
DEMO_SPLIT = REPO / "data" / "demo_split"
CUB_SPLIT = REPO / "data" / "cub_split"
RESULTS = REPO / "results"


def task_script(name, repo=REPO):
    """The task script `name` (a task's name is its script's module): <repo>/<name>.py."""
    return repo / f"{name}.py"


def is_inside(path, folder):
    """True if `path` is `folder` or below it, links followed (realpath: a symlink loop is no error)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
