"""Does NetVLAD help? Task 2 against task 3 (k-means init, K = 4, 16, 64, and the report's init, K = 4),
over several seeds, as Markdown tables: test metrics and train top-1 (mean ± sample std), then each
seed's test top-1. Task 2 also runs in fp32, to show whether bf16 autocast changes the metrics
beyond seed noise (per seed in the second table).

Each run goes to OUT/<config>/seed<N> with its console output in log.txt; a finished run (metrics.json)
is reused, an interrupted or shorter one resumed, so the study can be stopped, restarted and extended.
The tables cover every config with finished runs of --epochs in OUT, so a slow config can run with
fewer seeds by a second command (--configs netvlad_k64 --seeds 3) and still appear.

    python bench/netvlad_study.py                                  # 100 epochs, seeds 0-4, gamma 0.9
    python bench/netvlad_study.py --gamma 1 --configs shallow netvlad_k16   # constant learning rate
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
from common.run_folder import finished_metrics, read_config, run_or_reuse  # noqa: E402

CONFIGS = {
    "shallow": (task2_shallow.main, []),
    "shallow_fp32": (task2_shallow.main, ["--precision", "fp32"]),
    "netvlad_k4": (task3_netvlad.main, ["--clusters", "4"]),
    "netvlad_k16": (task3_netvlad.main, ["--clusters", "16"]),
    "netvlad_k64": (task3_netvlad.main, ["--clusters", "64"]),
    "netvlad_k4_report_init": (task3_netvlad.main, ["--clusters", "4", "--init", "random"]),
}


def finished_runs(folder, epochs):
    """Metrics of the finished --epochs runs seed0, seed1, ... in a config's folder, up to the first gap."""
    runs = []
    while (config := read_config(folder / f"seed{len(runs)}")) and config["arguments"]["epochs"] == epochs:
        metrics = finished_metrics(folder / f"seed{len(runs)}")
        if metrics is None:
            break
        runs.append(metrics)
    return runs


def tables(runs):
    """Mean ± std of test metrics and train top-1 per config, then every seed's test top-1."""
    lines = ["| config | test top-1 | test top-3 | test logloss | train top-1 | seeds |", "|---|---:|---:|---:|---:|---:|"]
    for name, config_runs in runs.items():
        stats = results.mean_std(config_runs)
        test = stats["test"]
        lines.append(f"| {name} | {results.format_cell(test['top1'], 2, ' %')} | {results.format_cell(test['top3'], 2, ' %')} "
                     f"| {results.format_cell(test['loss'], 4)} | {results.format_cell(stats['train']['top1'], 1, ' %')} "
                     f"| {len(config_runs)} |")
    most = max(len(r) for r in runs.values())
    lines += ["", "Test top-1 per seed:", "", "| config | " + " | ".join(f"seed {s}" for s in range(most)) + " |",
              "|---|" + "---:|" * most]
    for name, config_runs in runs.items():
        cells = [f"{m['test']['top1']:.2f} %" for m in config_runs] + ["–"] * (most - len(config_runs))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="runs per config, seeds 0..N-1 (default: 5)")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs of every run (default: 100)")
    parser.add_argument("--gamma", type=float, default=0.9,
                        help="StepLR factor of every run (default: 0.9, the report's; 1 = constant learning rate)")
    parser.add_argument("--data", type=Path, default=None, help="split folder (default: the demo split)")
    parser.add_argument("--out", type=Path, default=None,
                        help="study folder (default: results/netvlad_study, or results/netvlad_study_gamma<G>)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="train only these configs (default: all); e.g. a slow one with fewer --seeds")
    args = parser.parse_args()
    if args.seeds < 1 or args.epochs < 1:
        raise UserError("--seeds and --epochs must be at least 1")
    out = args.out or REPO / "results" / ("netvlad_study" if args.gamma == 0.9 else f"netvlad_study_gamma{args.gamma:g}")
    shared = [*(["--data", str(args.data)] if args.data else []), "--gamma", str(args.gamma)]
    jobs = [(seed, name) for seed in range(args.seeds) for name in args.configs]  # a whole seed first
    for seed, name in tqdm(jobs, desc="runs", unit="run"):
        main_fn, argv = CONFIGS[name]
        run_or_reuse(main_fn, [*argv, *shared, "--seed", str(seed)], out / name / f"seed{seed}", args.epochs)
    runs = {name: finished_runs(out / name, args.epochs) for name in CONFIGS}
    report = tables({name: r for name, r in runs.items() if r})
    results.atomic_write(out / "study.md", f"{args.epochs} epochs, --gamma {args.gamma:g}\n\n{report}\n")
    print(report)


if __name__ == "__main__":
    run_main(main)
