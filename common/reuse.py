"""Reuse by reproduce.py and the studies: a finished run is read back, an interrupted or shorter one
continued, and one made with other settings refused, so that stopping them loses no finished work."""
import contextlib
from dataclasses import dataclass
from pathlib import Path

from common.config import NOT_EXPERIMENT, RunConfig, is_number
from common.errors import UserError
from common.files import open_regular, read_json
from common.run import train
from common.results import COLUMNS, ROWS
from common.run_folder import make_folder


def read_config(out):
    """config.json of a run, with the fields that reuse and reports read; None if there is none."""
    file = out / "config.json"
    if not file.exists():
        return None
    try:
        config = read_json(file)
        if isinstance(config["arguments"]["epochs"], int) and isinstance(config["parameters"]["trainable"], int):
            return config
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deeply
        pass
    raise UserError(f"{out / 'config.json'} is unreadable or was not written by this project: "
                    "use --force to train that run again, or another folder")


def finished_metrics(out):
    """metrics.json of a finished run, or None when it is missing or damaged (the run is then resumed)."""
    try:
        metrics = read_json(out / "metrics.json")
        if all(is_number(metrics[split][m]) for split, _ in ROWS for m, _ in COLUMNS):
            return metrics
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        pass
    return None


def same(recorded, asked):
    """A value of config.json (plain JSON) and the planned one (a Path where the option takes a path)."""
    if isinstance(asked, Path) and isinstance(recorded, str):
        return Path(recorded) == asked
    return recorded == asked


def setting_differences(task, saved, planned):
    """Where a run's config.json and the planned RunConfig differ in what defines the experiment
    (RunConfig.experiment: every setting, given or left at its default), as readable strings.

    Task 1's backbone weights are compared by --model, --no-pretrained and --weights, not by the
    fingerprint config.json holds: computing it loads the whole backbone (for a timm model perhaps
    a download) for every run reused. --resume, which loads it anyway, compares the fingerprint."""
    differences = [] if saved.get("task") in (task.name, *task.former_names) else \
        [f"task {saved.get('task')} there, {task.name} asked"]
    recorded, asked = saved["arguments"], planned.experiment()
    names = [*asked, *(name for name in recorded if name not in asked and name not in NOT_EXPERIMENT)]
    for name in names:
        had, wanted = recorded.get(name, "unset"), asked.get(name, "unset")
        if not same(had, wanted):
            differences.append(f"--{name.replace('_', '-')} {had} there, {wanted} asked")
    return differences


def check_continuable(task, saved, config):
    """The run whose config.json is `saved` may be reused or continued as `config`: the same
    experiment, trained for no more than config.epochs."""
    differences = setting_differences(task, saved, config)
    if differences:  # reusing or resuming it would report another experiment under these settings
        raise UserError(f"{config.out} holds a run with other settings ({'; '.join(differences)}): "
                        "use --force or another folder")
    recorded = saved["arguments"]["epochs"]
    if recorded > config.epochs:
        raise UserError(f"{config.out} holds a {recorded}-epoch run, more than the {config.epochs} epochs asked "
                        "for: use --force or another folder")


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, to key dicts
class PlannedRun:
    """One run of a task, planned once: its configuration, resuming (--resume) or replacing (--force)
    what its folder holds; or reused, where its folder holds that run finished. In this process or in
    a process of its own, it is the same run; each way sets the device it runs on."""
    task: object  # common.task.Task
    config: RunConfig
    reused: bool = False
    part: str = ""  # which of the task's runs it is, e.g. "rep0 fold3"; "" names it by its seed

    @property
    def label(self):
        return f"{self.task.name} {self.part or f'seed {self.config.seed}'}"


def plan(task, config, force=False, part=""):
    """The run of `config` (checked) into config.out: reused when config.out holds it finished; else
    continued from its checkpoint (an interrupted or shorter run) or started afresh (`force`, or
    nothing to continue from). A run with another setting, given or left at its default, is refused."""
    task.checked(config)
    saved = None if force else read_config(config.out)
    if saved is not None:
        check_continuable(task, saved, config)
        if saved["arguments"]["epochs"] == config.epochs and finished_metrics(config.out) is not None:
            return PlannedRun(task, config, reused=True, part=part)
    resume = not force and (config.out / "last.pt").exists()
    return PlannedRun(task, config.replace(resume=resume, force=not resume), part=part)


def train_logged(task, config):
    """train(task, config) with its printed output appended to its run folder's log.txt."""
    make_folder(config.out, "run folder")
    with open_regular(config.out / "log.txt", "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        return train(task, config)


def run_or_reuse(task, config, force=False):
    """The run of `config`, its printed output in its log.txt, unless config.out holds it finished
    (see plan). Returns its metrics.

    The studies build on this, so that stopping and restarting them loses no finished work.
    (metrics.json exists only while it describes the run in config.json: a resumed run removes it first.)
    """
    planned = plan(task, config, force)
    if not planned.reused:
        train_logged(task, planned.config)
    return read_json(config.out / "metrics.json")
