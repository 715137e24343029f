"""The tasks: every task script in this folder (task<N>_<name>.py) and the Task it declares. What
reproduce.py, predict.py, the studies and the benchmarks know of the tasks, they read here; a new
script is found by its name, with no other change."""
import importlib
import re

from common.errors import UserError
from common.paths import REPO

SCRIPT_NAME = re.compile(r"task\d+_\w+")


def task_names():
    """The task scripts' module names, in order: task1_efficientnet, task1_googlenet, ..., task3_netvlad."""
    return sorted(p.stem for p in REPO.glob("task*.py") if SCRIPT_NAME.fullmatch(p.stem))


def load(name):
    """The Task that the script `name` declares (its TASK), by the script's name or a name earlier runs
    recorded for it."""
    if name not in task_names():
        found = [task for task in all_tasks() if name in task.former_names]
        if not found:
            raise UserError(f"unknown task {name!r}: no {name}.py here (tasks: {', '.join(task_names())})")
        return found[0]
    try:
        task = getattr(importlib.import_module(name), "TASK", None)
    except Exception as e:  # a script being written: one line naming it, not a traceback from the registry
        raise UserError(f"{name}.py cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if task is None or task.name != name:
        raise UserError(f"{name}.py declares no TASK named {name!r}: see docs/adding-a-task.md")
    return task


def all_tasks():
    return [load(name) for name in task_names()]

