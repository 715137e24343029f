"""Does NetVLAD help? Task 2 against task 3 (k-means init, K = 4, 16, 64, and the report's init, K = 4),
over several seeds, as a Markdown table of test metrics (mean ± sample std). Task 2 also runs in
fp32, to show whether bf16 autocast changes the metrics beyond seed noise.

Each run goes to OUT/<config>/seed<N> with its console output in log.txt; a finished run (metrics.json)
is reused, an interrupted or shorter one resumed, so the study can be stopped, restarted and extended.
"""
import argparse
import sys
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import task2_shallow  # noqa: E402
import task3_netvlad  # noqa: E402
from common import results  # noqa: E402
from common.cli import UserError, run_main  # noqa: E402
from common.run_folder import run_or_reuse  # noqa: E402

CONFIGS = {
    "shallow": (task2_shallow.main, []),
    "shallow_fp32": (task2_shallow.main, ["--precision", "fp32"]),
    "netvlad_k4": (task3_netvlad.main, ["--clusters", "4"]),
    "netvlad_k16": (task3_netvlad.main, ["--clusters", "16"]),
    "netvlad_k64": (task3_netvlad.main, ["--clusters", "64"]),
    "netvlad_k4_report_init": (task3_netvlad.main, ["--clusters", "4", "--init", "random"]),
}


def table(tests, seeds):
    lines = ["| config | test top-1 | test top-3 | test logloss | seeds |", "|---|---:|---:|---:|---:|"]
    for name, runs in tests.items():
        stats = results.mean_std([{"test": m} for m in runs])["test"]
        lines.append(f"| {name} | {results.format_cell(stats['top1'], 2, ' %')} "
                     f"| {results.format_cell(stats['top3'], 2, ' %')} | {results.format_cell(stats['loss'], 4)} "
                     f"| {seeds} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="runs per config, seeds 0..N-1 (default: 5)")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs of every run (default: 100)")
    parser.add_argument("--data", type=Path, default=None, help="split folder (default: the demo split)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "netvlad_study",
                        help="study folder (default: results/netvlad_study)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="run only these configs (default: all); e.g. split them over two processes")
    args = parser.parse_args()
    if args.seeds < 1 or args.epochs < 1:
        raise UserError("--seeds and --epochs must be at least 1")
    shared = ["--data", str(args.data)] if args.data else []
    tests = {name: [] for name in args.configs}
    jobs = [(seed, name) for seed in range(args.seeds) for name in args.configs]  # a whole seed first
    for seed, name in tqdm(jobs, desc="runs", unit="run"):
        main_fn, argv = CONFIGS[name]
        out = args.out / name / f"seed{seed}"
        tests[name].append(run_or_reuse(main_fn, [*argv, *shared, "--seed", str(seed)], out, args.epochs)["test"])
    report = table(tests, args.seeds)
    results.atomic_write(args.out / "study.md", f"{args.epochs} epochs, seeds 0..{args.seeds - 1}\n\n{report}\n")
    print(report)


if __name__ == "__main__":
    run_main(main)
