"""The tasks: every task script in this folder (task<N>_<name>.py) and the Task it declares. What
reproduce.py, predict.py, the studies and the benchmarks know of the tasks, they read here; a new
script is found by its name, with no other change. A file named like a script that is not one (a
backup, notes, a script half written) is skipped with a warning where all tasks are listed, and
never stops a command that needs another task."""
import importlib
import os
import re

from common.errors import UserError, warn
from common.paths import REPO, SCRIPT_NAME, task_script
from common.task import Task

DECLARES_TASK = re.compile(rb"^TASK\s*[:=]", re.M)  # a task script's own line, as docs/adding-a-task.md shows
warned = set()  # the skipped scripts already named: one warning each, however often the tasks are listed


class UnknownTask(UserError):
    """No script here declares the task: a name mistyped, or a script removed since its runs were made."""


def task_names():
    """The task scripts' module names, in order: task1_efficientnet, task1_googlenet, ..., task3_netvlad
    (every file or folder named like one: load says which are not)."""
    return sorted(p.stem for p in REPO.glob("task*.py") if SCRIPT_NAME.fullmatch(p.stem))


def first_line(error):
    return (str(error).splitlines() or [""])[0][:200]


def load_script(name):
    """The Task that REPO/name.py declares, or one line saying why it declares none."""
    path = task_script(name, REPO)  # REPO: tests point it at a folder of their own
    if not path.is_file():
        raise UserError(f"{name}.py is not a file, so not a task script")
    if not DECLARES_TASK.search(path.read_bytes()):  # notes or a scratch file: its code never runs here
        raise UserError(f"{name}.py declares no TASK named {name!r}: see docs/adding-a-task.md")
    try:
        task = getattr(importlib.import_module(name), "TASK", None)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit too: a stray script's sys.exit(0) is not this command's exit
        raise UserError(f"{name}.py cannot be loaded ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(task, Task):
        raise UserError(f"{name}.py declares no TASK named {name!r}: see docs/adding-a-task.md")
    if task.name != name:  # a backup copy of another script, say
        raise UserError(f"{name}.py declares the TASK of {task.name!r}, not its own")
    return task


def load(name):
    """The Task that the script `name` declares (its TASK), by the script's name or a name earlier runs
    recorded for it. Only that script is imported, but for a former name: then the scripts named most
    like it first, until one declares it."""
    if name in task_names():
        return load_script(name)
    for candidate in sorted(task_names(), key=lambda n: -len(os.path.commonprefix([n, name]))):
        try:
            task = load_script(candidate)
        except UserError:  # not a task: it declares no former name either
            continue
        if name in task.former_names:
            return task
    raise UnknownTask(f"unknown task {name!r}: no {name + '.py'!r} here (tasks: {', '.join(task_names())})")


def all_tasks():
    """Every task declared here; each file named like a script that declares none is one warning."""
    found = []
    for name in task_names():
        try:
            found.append(load_script(name))
        except UserError as e:
            if (REPO, name) not in warned:
                warn(f"{e}; skipped")
                warned.add((REPO, name))
    return found
