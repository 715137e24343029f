"""Reuse by reproduce.py and the studies: a finished run is read back, an interrupted or shorter one
continued, and one made with other settings refused, so that stopping them loses no finished work."""
import contextlib
from pathlib import Path

from common.config import is_number
from common.errors import UserError
from common.files import open_regular, read_json
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


def option_differences(recorded, argv):
    """The options named in argv ("--name value" or a bare "--flag") whose value differs from the
    arguments a run recorded in its config.json, as readable strings."""
    differences, i = [], 0
    while i < len(argv):
        name = argv[i][2:].replace("-", "_")
        has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        asked, i = (argv[i + 1], i + 2) if has_value else (True, i + 1)
        if name in ("device", "compile"):  # they change rounding, not the experiment (as in run_key)
            continue
        had = recorded.get(name)
        if asked is True:
            same = had is True
        elif isinstance(had, (int, float)) and not isinstance(had, bool):
            try:
                same = float(asked) == had
            except ValueError:
                same = False
        else:
            same = asked in (str(had), str(Path(str(had))))
        if not same:
            differences.append(f"--{name.replace('_', '-')} {had} there, {asked} asked")
    return differences


def planned_argv(argv, out, epochs, force=False):
    """What a task script needs to train `epochs` into `out`: None when out holds that finished run
    (reuse it), else argv plus --epochs, --out and --resume (an interrupted or shorter run
    continues from its checkpoint) or --force (`force`, or nothing to continue from)."""
    config = None if force else read_config(out)
    recorded = config["arguments"]["epochs"] if config else None
    differences = option_differences(config["arguments"], argv) if config else []
    if differences:  # reusing or resuming it would report another experiment under these settings
        raise UserError(f"{out} holds a run with other settings ({'; '.join(differences)}): "
                        "use --force or another folder")
    if recorded is not None and recorded > epochs:
        raise UserError(f"{out} holds a {recorded}-epoch run, more than the {epochs} epochs asked for: "
                        "use --force or another folder")
    if recorded == epochs and finished_metrics(out) is not None:
        return None
    resume = not force and (out / "last.pt").exists()
    return [*argv, "--epochs", str(epochs), "--out", str(out), "--resume" if resume else "--force"]


def run_logged(main, argv, out):
    """main(argv) with its printed output appended to out/log.txt."""
    make_folder(out, "run folder")
    with open_regular(out / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        main(argv)


def run_or_reuse(main, argv, out, epochs, force=False):
    """Run a task script's main(argv) for `epochs` into `out`, its printed output in out/log.txt,
    unless out holds that finished run (see planned_argv). Returns the run's metrics.

    The studies build on this, so that stopping and restarting them loses no finished work.
    (metrics.json exists only while it describes the run in config.json: a resumed run removes it first.)
    """
    argv = planned_argv(argv, out, epochs, force)
    if argv is not None:
        run_logged(main, argv, out)
    return read_json(out / "metrics.json")
