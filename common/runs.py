"""Planned runs (common.reuse.PlannedRun) run to the end: one at a time in this process, or N at a
time in processes of their own, one per device; either way one progress bar shows how far each run
under way is, read from its history.csv."""
import contextlib
import functools
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from common import results
from common.cli import OUTCOME
from common.errors import UserError
from common.files import open_regular, read_json
from common.options import command_line
from common.paths import task_script
from common.reuse import train_logged
from common.run_folder import make_folder
from common.train import STOPPED_EXIT_CODES
from common.weights import WeightsUnavailable

PROGRESS_EVERY_S = 2  # how often the bar shows the epochs of the runs under way


def runs_under_way(running):
    """The progress of the runs under way, briefly, as several share the line: `running` maps a run
    folder to (label, epochs); its last history.csv row says how far it is."""
    shown = []
    for out, (name, epochs) in sorted(running.items(), key=lambda item: item[1][0]):
        try:
            row = results.read_history(out)[-1]
            shown.append(f"{name}: epoch {int(row['epoch'])}/{epochs}, val top-1 {float(row['val_top1']):.1f} %")
        except (OSError, ValueError, KeyError, IndexError, TypeError):  # not written yet (or not by us)
            shown.append(f"{name}: starting")
    return "; ".join(shown)


class Running:
    """The runs under way, wherever they train, shown on the progress bar: every PROGRESS_EVERY_S
    seconds a thread reads how far each is from its history.csv."""

    def __init__(self, bar):
        self.bar, self.runs, self.lock = bar, {}, threading.Lock()

    @contextlib.contextmanager
    def track(self, plan):
        with self.lock:
            self.runs[plan.config.out] = (plan.label, plan.config.epochs)
        try:
            yield
        finally:
            with self.lock:
                self.runs.pop(plan.config.out)

    def show(self):
        with self.lock:
            running = dict(self.runs)
        self.bar.set_postfix_str(runs_under_way(running))

    @contextlib.contextmanager
    def shown(self):
        done = threading.Event()

        def refresh():
            while not done.wait(PROGRESS_EVERY_S):
                self.show()
        thread = threading.Thread(target=refresh, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()


def run_here(plan, device, running):
    """A planned run in this process, its printed output in its log.txt; returns its metrics."""
    if not plan.reused:
        with running.track(plan):
            train_logged(plan.task, plan.config.replace(device=device))
    return read_json(plan.config.out / "metrics.json")


def run_as_process(plan, devices, jobs, children, running):
    """A planned run as a process of its own, on a device taken from the queue `devices` while it
    trains; returns its metrics. The process is in `children` while it runs: in a session of its
    own, so that a Ctrl-C reaches it once, forwarded by run_concurrently as SIGTERM, and it saves a
    checkpoint before it stops. Why it failed, it writes to an outcome file (common.cli.OUTCOME)."""
    out = plan.config.out
    if plan.reused:
        return read_json(out / "metrics.json")
    device, log = devices.get(), out / "log.txt"
    try:
        make_folder(out, "run folder")
        with tempfile.TemporaryDirectory() as folder, open_regular(log, "a") as f, running.track(plan):
            outcome = Path(folder) / "outcome.json"
            env = {**os.environ, OUTCOME: str(outcome)}
            if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))  # the jobs share the cores
            # in our folder: its command line's relative paths are ours
            child = subprocess.Popen([sys.executable, str(task_script(plan.task.name)),
                                      *command_line(plan.task, plan.config.replace(device=device))],
                                     stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            children.add(child)
            code = child.wait()
            children.discard(child)
            error = child_error(outcome)
    finally:
        devices.put(device)
    if code == WeightsUnavailable.exit_code:
        raise WeightsUnavailable(error)
    if code in STOPPED_EXIT_CODES:  # it saved a checkpoint on Ctrl-C, SIGTERM or SIGHUP
        raise UserError(f"{plan.label} was stopped (see {log}); run reproduce.py again to continue")
    if code != 0:
        raise UserError(f"{plan.label} failed (exit code {code}): {error} (see {log})")
    return read_json(out / "metrics.json")


def child_error(outcome):
    """Why a child script failed, as its run_main wrote it; one that ended before it could say, has no message."""
    try:
        return read_json(outcome)["error"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no error message"


def collect(plan, result, metrics, missing):
    """A finished run's metrics (`result()` gives them) into `metrics`, or its task into `missing`
    where its weights are unavailable. A run that finished shows its test top-1 and logloss."""
    try:
        metrics[plan] = result()
    except WeightsUnavailable as e:
        if plan.task not in missing:
            tqdm.write(f"{plan.task.name}: weights unavailable, skipped ({e})")
        missing[plan.task] = str(e)
        return
    test = metrics[plan]["test"]
    tqdm.write(f"{plan.label}: test top-1 {test['top1']:.2f} %, logloss {test['loss']:.4f}")


def run_plans(plans, devices, bar):
    """Every planned run: with one device one at a time in this process, with N devices N at a time,
    each in a process of its own on one of them. Returns their metrics (plan -> metrics) and the
    tasks whose weights are missing (task -> why). `bar` counts the runs and shows those under way."""
    metrics, missing = {}, {}
    with Running(bar).shown() as running:
        if len(devices) > 1:
            run_concurrently(plans, devices, bar, running, metrics, missing)
        else:
            for plan in plans:
                if plan.task not in missing:  # its weights: the same for every seed
                    run_here_or_say_stopped(plan, devices[0], running, metrics, missing)
                bar.update()
    return metrics, missing


def run_here_or_say_stopped(plan, device, running, metrics, missing):
    try:
        collect(plan, functools.partial(run_here, plan, device, running), metrics, missing)
    except SystemExit:  # Ctrl-C inside the run: it said so in its log.txt; say it here too
        tqdm.write(f"{plan.label}: stopped (see {plan.config.out / 'log.txt'}); run reproduce.py again to continue")
        raise


def run_concurrently(plans, device_names, bar, running, metrics, missing):
    """N runs at a time for N devices, each a process on a device of its own. Ctrl-C (or SIGTERM or
    SIGHUP, see common.cli.signals_as_ctrl_c) stops them all as Ctrl-C stops one run: each saves a checkpoint and
    stops after its epoch."""
    devices, children, jobs = queue.Queue(), set(), len(device_names)
    for device in device_names:
        devices.put(device)
    pool = ThreadPoolExecutor(jobs)
    try:
        futures = {pool.submit(run_as_process, plan, devices, jobs, children, running): plan for plan in plans}
        for future in as_completed(futures):
            collect(futures[future], future.result, metrics, missing)
            bar.update()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # runs not started yet never start
        for child in list(children):
            # checkpoint, then stop; SIGTERM, not SIGINT, which a child of a background job ignores
            child.send_signal(signal.SIGTERM)
        raise
    finally:
        pool.shutdown(wait=True)  # the runs under way end first
