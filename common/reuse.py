"""Reuse by reproduce.py and the studies: a finished run is read back, an interrupted or shorter one
continued, and one made with other settings refused, so that stopping them loses no finished work."""
import contextlib
import functools
from pathlib import Path

from common.config import NOT_EXPERIMENT, is_number
from common.errors import UserError
from common.files import open_regular, read_json
from common.options import as_argv, parse_run_config, run_task
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


def setting_differences(task, config, planned):
    """Where a run's config.json and the planned RunConfig differ in what defines the experiment
    (RunConfig.experiment: every setting, given or left at its default), as readable strings.

    Task 1's backbone weights are compared by --model, --no-pretrained and --weights, not by the
    fingerprint config.json holds: computing it loads the whole backbone (for a timm model perhaps
    a download) for every run reused. --resume, which loads it anyway, compares the fingerprint."""
    differences = [] if config.get("task") in (task.name, *task.former_names) else \
        [f"task {config.get('task')} there, {task.name} asked"]
    recorded, asked = config["arguments"], planned.experiment()
    names = [*asked, *(name for name in recorded if name not in asked and name not in NOT_EXPERIMENT)]
    for name in names:
        had, wanted = recorded.get(name, "unset"), asked.get(name, "unset")
        if not same(had, wanted):
            differences.append(f"--{name.replace('_', '-')} {had} there, {wanted} asked")
    return differences


def check_continuable(task, config, argv, out, epochs):
    """The run in out may be reused or continued by the task script's argv (which names --epochs):
    the same experiment, trained for no more than `epochs`."""
    differences = setting_differences(task, config, parse_run_config(task, argv))
    if differences:  # reusing or resuming it would report another experiment under these settings
        raise UserError(f"{out} holds a run with other settings ({'; '.join(differences)}): "
                        "use --force or another folder")
    recorded = config["arguments"]["epochs"]
    if recorded > epochs:
        raise UserError(f"{out} holds a {recorded}-epoch run, more than the {epochs} epochs asked for: "
                        "use --force or another folder")


def planned_argv(task, argv, out, epochs, force=False):
    """What the task script needs to train `epochs` into `out` with the options argv: None when out
    holds that finished run (reuse it), else argv plus --epochs, --out and --resume (an interrupted
    or shorter run continues from its checkpoint) or --force (`force`, or nothing to continue from).
    A run with another setting, whether argv names it or leaves it at its default, is refused."""
    argv = [*argv, *as_argv(epochs=epochs, out=out)]
    config = None if force else read_config(out)
    if config is not None:
        check_continuable(task, config, argv, out, epochs)
        if config["arguments"]["epochs"] == epochs and finished_metrics(out) is not None:
            return None
    resume = not force and (out / "last.pt").exists()
    return [*argv, *as_argv(resume=resume, force=not resume)]


def run_logged(main, argv, out):
    """main(argv) with its printed output appended to out/log.txt."""
    make_folder(out, "run folder")
    with open_regular(out / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        main(argv)


def run_or_reuse(task, argv, out, epochs, force=False):
    """Run the task with the options argv for `epochs` into `out`, its printed output in out/log.txt,
    unless out holds that finished run (see planned_argv). Returns the run's metrics.

    The studies build on this, so that stopping and restarting them loses no finished work.
    (metrics.json exists only while it describes the run in config.json: a resumed run removes it first.)
    """
    argv = planned_argv(task, argv, out, epochs, force)
    if argv is not None:
        run_logged(functools.partial(run_task, task), argv, out)
    return read_json(out / "metrics.json")
