"""What the benchmarks and studies share for running task scripts as whole processes and timing them:
the tasks they train, the files of an earlier commit to compare with, one process's wall time and peak
memory, a fresh process's measurement, a finished run's epoch times and the CPU features that explain them."""
import csv
import json
import os
import subprocess
import sys
import time

import tasks
from common.options import as_argv

# the tasks the comparisons against an earlier commit train, with the options reproduce.py gives them
TASK_ARGV = {name: as_argv(**tasks.load(name).reproduce_with) for name in ("task2_shallow", "task3_netvlad")}


def checkout(repo, commit, folder):
    """The files of `commit` of the repository `repo` in `folder`, without touching its work tree."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def timed(command, cwd, env):
    """Wall seconds and peak RSS (MiB) of one whole process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)}\n{process.stderr.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def in_fresh_process(script, argv, env=None):
    """The JSON that `python script argv` prints on its last line. A fresh process has a peak memory
    of its own, empty in-memory caches, and reads REPRO_CACHE_DIR from `env` when it starts."""
    command = [sys.executable, str(script), *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def epoch_seconds(out):
    """The seconds of every epoch of the run in `out`, from its history.csv."""
    with open(out / "history.csv", newline="") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def cpu_flags():
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags) or "none of avx512/amx"
