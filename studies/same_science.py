"""Does the faster code give the same science? Tasks 2 and 3 over several seeds, this checkout
against an earlier commit (default 6b1acb2, before the allocator fix and torch.compile).

Every run is a whole `python taskN_*.py` process writing WORK/<version>/<task>/seed<N>; a run
whose metrics.json exists is reused, so the two sides can be run at different times
(--versions old, later --versions new) and an interrupted study picks up where it stopped.
Printed: each seed's test top-1 / top-3 / logloss, old and new and their difference, then
mean ± sample std per side and whether the means agree within one standard deviation.

    python studies/same_science.py --work /tmp/science                 # 5 seeds, both sides
    python studies/same_science.py --work /tmp/science --versions old  # one side now, the other later
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
import tasks  # noqa: E402
from common.baseline import COMPARED_TASKS, checkout  # noqa: E402
from common.cli import UserError, run_main  # noqa: E402
from common.demo import default_data  # noqa: E402
from common.errors import shown  # noqa: E402
from common.options import as_argv  # noqa: E402
from common.run_folder import check_folder_writable  # noqa: E402
from common.runtime import cpu_flags  # noqa: E402

METRICS = (("top1", "test top-1 %", 2), ("top3", "test top-3 %", 2), ("loss", "test logloss", 4))


def train(version, code, task, seed, args):
    """Test metrics of one run, trained now unless WORK already holds them."""
    out = args.work / version / task / f"seed{seed}"
    if not (out / "metrics.json").exists():
        command = [sys.executable, str(code / f"{task}.py"), "--data", str(args.data), "--out", str(out), "--force",
                   "--epochs", str(args.epochs), "--seed", str(seed), "--precision", args.precision, *as_argv(**tasks.load(task).reproduce_with)]
        print(f"{version} {task} seed {seed} ...", flush=True)
        log = args.work / version / task / f"seed{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            if subprocess.run(command, cwd=code, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                sys.exit(f"failed: {' '.join(command)} (see {log})")
    return json.loads((out / "metrics.json").read_text())["test"]


def summary(task, old, new):
    print(f"\n{task}: seed | " + " | ".join(f"{title} old / new (diff)" for _, title, _ in METRICS))
    for seed, (a, b) in enumerate(zip(old, new)):
        print(f"  {seed} | " + " | ".join(f"{a[k]:.{d}f} / {b[k]:.{d}f} ({b[k] - a[k]:+.{d}f})" for k, _, d in METRICS))
    for key, title, digits in METRICS:
        (m_old, s_old), (m_new, s_new) = [(statistics.mean(r[key] for r in side), statistics.stdev(r[key] for r in side))
                                          for side in (old, new)]
        verdict = "agree" if abs(m_new - m_old) <= min(s_old, s_new) else "DIFFER"
        print(f"  {title:<14} old {m_old:.{digits}f} ± {s_old:.{digits}f}   new {m_new:.{digits}f} ± {s_new:.{digits}f}"
              f"   |difference| {abs(m_new - m_old):.{digits}f}: {verdict} within one std")


def baseline_commit(name):
    """--baseline as a full commit hash, checked before WORK/baseline is made for its files (a failed
    git archive would leave that folder empty, and later runs would take it for the old code)."""
    found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise UserError(f"--baseline {shown(name)}: no such commit in {shown(REPO)}")
    return found.stdout.strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs; finished ones are reused")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: 5)")
    parser.add_argument("--tasks", nargs="+", choices=list(COMPARED_TASKS), default=list(COMPARED_TASKS))
    parser.add_argument("--versions", nargs="+", choices=("old", "new"), default=["old", "new"],
                        help="train only these sides now (default: both); the summary needs both")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="every run's --precision (default: auto, the scripts' default)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run (default: 100)")
    parser.add_argument("--data", type=Path, default=None, help="split folder (default: the demo split)")
    parser.add_argument("--baseline", default="6b1acb2", help="the earlier commit (default: 6b1acb2)")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 for a standard deviation")
    check_folder_writable(args.work, "--work")
    args.work = args.work.resolve()
    old_code = args.work / "baseline"
    if "old" in args.versions and not old_code.exists():
        checkout(REPO, baseline_commit(args.baseline), old_code)
    args.data = (args.data or default_data()).resolve()
    print(f"{os.cpu_count()} CPUs, flags: {cpu_flags()}; torch threads from OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; {args.epochs} epochs, --precision {args.precision}")
    codes = {"old": old_code, "new": REPO}
    metrics = {}
    for task in args.tasks:
        for seed in range(args.seeds):
            for version in args.versions:
                metrics.setdefault((version, task), []).append(train(version, codes[version], task, seed, args))
    if set(args.versions) == {"old", "new"}:
        for task in args.tasks:
            summary(task, metrics["old", task], metrics["new", task])


if __name__ == "__main__":
    run_main(main)
