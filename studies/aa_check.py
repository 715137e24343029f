"""The A/A check: is the paired test honest? One configuration (EfficientNet-Lite0 frozen, task 1)
trained twice with different seeds differs by chance alone, so a test at the 5 % level should call
such a pair different in at most about 5 % of the comparisons; more means its p-values are too small.

  single split      seeds 0..M-1 on one split (the demo split), every pair of seeds compared with
                    paired_difference (bootstrap interval and exact sign-flip test) and called
                    different where supported(low, high, p); also the disjoint pairs (0, 1), (2, 3), ...,
                    which share no run and so are independent comparisons.
  cross-validation  comparison i draws 5 folds of the images with seed i and trains every fold with
                    --fold-seeds seeds; the first two are compared with cv_paired_difference on their
                    per-fold test top-1 (n2/n1 from the runs' split sizes) and called different where
                    p < 0.05 (and, with more seeds, every pair of them).

Runs go to OUT/single/seed<N> and OUT/cv/draw<i>/fold<k>/seed<N> (the folds to OUT/folds/draw<i>),
each with its console output in log.txt; a finished run is reused, so a re-run only adds what is
new. The table is printed and written to OUT/aa_check.md. OUT is a new folder or one the check made:
one holding anything else is refused, not written to.

    python studies/aa_check.py                                  # 30 seeds, 20 comparisons
    python studies/aa_check.py --seeds 10 --comparisons 4       # quicker, and a wider interval
    python studies/aa_check.py --comparisons 5 --fold-seeds 4   # 6 pairs of seeds per fold draw
"""
import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binomtest
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
import tasks  # noqa: E402
from common.cli import UserError, run_main  # noqa: E402
from common.config import MAX_SEEDS  # noqa: E402
from common.evidence import read_evidence  # noqa: E402
from common.files import atomic_files, atomic_write, read_json  # noqa: E402
from common.folds import fold_folders, split_folds  # noqa: E402
from common.paths import DEMO_IMAGES  # noqa: E402
from common.reuse import run_or_reuse  # noqa: E402
from common import run_folder  # noqa: E402
from common.run_folder import check_folder_writable  # noqa: E402
from common.stats import CONFIDENCE, cv_paired_difference, paired_difference, supported  # noqa: E402

TASK = "task1_efficientnet"
FOLD_COUNT = 5
LEVEL = 1 - CONFIDENCE  # a test at the 5 % level
# Comparison i draws its folds with seed i and trains with seeds CV_SEEDS + SEED_STRIDE * i + j,
# j < --fold-seeds: never i itself (training seeds numpy's global RandomState, which would replay the
# stream that drew the folds), never another comparison's (they stay independent of each other), and
# a larger --fold-seeds later adds seeds without renaming the runs already made.
CV_SEEDS, SEED_STRIDE = MAX_SEEDS, 100


def run_config(task, args, seed, out, data=None):
    """A run's configuration: the task's defaults but for these settings and the command line's."""
    options = {"no_pretrained": True} if args.no_pretrained else {}
    return task.config(**options, data=data, seed=seed, out=out, epochs=args.epochs or task.epochs)


def single_split_correct(task, args):
    """Seeds x test images, 0/1: which test images each seed's run on args.data classified right."""
    runs = [args.out / "single" / f"seed{seed}" for seed in range(args.seeds)]
    for seed, out in enumerate(tqdm(runs, desc="single split", unit="run")):
        run_or_reuse(task, run_config(task, args, seed, out, data=args.data))
    return read_evidence(runs).correct()


def single_split_calls(correct):
    """(i, j) -> whether paired_difference calls seed i's run and seed j's different, for i < j."""
    return {(i, j): supported(*paired_difference(correct[i], correct[j])[1:])
            for i, j in itertools.combinations(range(len(correct)), 2)}


def fold_draw(args, draw):
    """The FOLD_COUNT split folders of args.images drawn with seed `draw`; made once, then reused."""
    dest = args.out / "folds" / f"draw{draw}"
    try:
        return fold_folders(dest)
    except UserError:  # not made yet, or half made by an interrupted check: force finishes it
        split_folds(args.images, dest, FOLD_COUNT, seed=draw, link=True, force=True)
        return fold_folders(dest)


def cv_accuracies(task, args):
    """Draws x seeds x folds of test top-1 in %, and each fold draw's test-to-training size ratio."""
    accuracies, ratios = [], []
    for draw in tqdm(range(args.comparisons), desc="fold draws", unit="draw"):
        folds, sizes = fold_draw(args, draw), []
        per_seed = np.zeros((args.fold_seeds, len(folds)))
        for j, k in itertools.product(range(args.fold_seeds), range(len(folds))):
            out = args.out / "cv" / f"draw{draw}" / f"fold{k}" / f"seed{j}"
            seed = CV_SEEDS + SEED_STRIDE * draw + j
            per_seed[j, k] = run_or_reuse(task, run_config(task, args, seed, out, data=folds[k]))["test"]["top1"]
            sizes.append(read_json(out / "config.json")["split_sizes"])
        accuracies.append(per_seed)
        ratios.append(np.mean([size["test"] / size["train"] for size in sizes]))
    return np.array(accuracies), ratios


def cv_calls(accuracies, ratios):
    """(draw, i, j) -> whether cv_paired_difference calls seeds i and j of that fold draw different."""
    return {(draw, i, j): cv_paired_difference(per_seed[i], per_seed[j], ratio)[3] < LEVEL
            for draw, (per_seed, ratio) in enumerate(zip(accuracies, ratios))
            for i, j in itertools.combinations(range(len(per_seed)), 2)}


def rate_row(label, calls, independent):
    """A table row: comparisons, those called different, and their rate, with a 95 % (Clopper-Pearson)
    interval where the comparisons are independent (pairs sharing a run are not)."""
    tested, different = len(calls), sum(calls)
    rate = f"{100 * different / tested:.1f} %"
    if independent:
        low, high = binomtest(different, tested).proportion_ci(CONFIDENCE)
        rate += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return f"| {label} | {tested} | {different} | {rate} |"


def single_split_rows(correct):
    """What the single split's seeds score, and its table rows."""
    calls, accuracy = single_split_calls(correct), 100 * correct.mean(axis=1)
    spread = (f"Single split: test top-1 over {len(correct)} seeds {accuracy.mean():.2f} ± {accuracy.std(ddof=1):.2f} % "
              f"(min {accuracy.min():.2f}, max {accuracy.max():.2f}), {correct.shape[1]} test images.")
    disjoint = [called for (i, j), called in calls.items() if i % 2 == 0 and j == i + 1]
    return spread, [rate_row(f"single split, every pair of {len(correct)} seeds", list(calls.values()), False),
                    rate_row("single split, disjoint pairs (0, 1), (2, 3), ...", disjoint, True)]


def cv_rows(accuracies, ratios):
    """What the fold draws' seeds score per fold, and their table rows."""
    calls, seeds = cv_calls(accuracies, ratios), accuracies.shape[1]
    between_seeds = accuracies[:, 0] - accuracies[:, 1]  # what the test sees: seed against seed, fold by fold
    spread = (f"Cross-validation: per-fold test top-1 over {len(accuracies)} fold draws x {seeds} seeds "
              f"{accuracies.mean():.2f} ± {accuracies.std(ddof=1):.2f} %; seed 0 minus seed 1 on a fold "
              f"{between_seeds.mean():+.2f} ± {between_seeds.std(ddof=1):.2f} points; n2/n1 {np.mean(ratios):.3f}.")
    rows = [rate_row(f"{FOLD_COUNT}-fold CV, seeds 0 and 1 of each fold draw",
                     [called for (_, i, j), called in calls.items() if (i, j) == (0, 1)], True)]
    if seeds > 2:
        rows.append(rate_row(f"{FOLD_COUNT}-fold CV, every pair of {seeds} seeds per fold draw", list(calls.values()),
                             False))
    return spread, rows


def report(epochs, correct, cv=None):
    """The Markdown report: how much the runs vary, then how often the tests call two of them different.
    cv: the fold draws' (accuracies, ratios), where there are any."""
    parts = [single_split_rows(correct), *([cv_rows(*cv)] if cv else [])]
    return "\n".join([f"A/A check: {TASK}, {epochs} epochs, a test at the {100 * LEVEL:g} % level", "",
                      *(spread for spread, _ in parts), "",
                      "| comparison | tested | called different | rate [95 % interval] |", "|---|---:|---:|---:|",
                      *(row for _, rows in parts for row in rows), "",
                      "The interval is given where the comparisons share no run (independent ones)."]) + "\n"


def foreign_entry(out):
    """The first entry of `out` that the check did not write, or None: aa_check.md counts as its own
    only if it opens with the line the check writes."""
    own = {".": "single|cv|folds|" + atomic_files("aa_check.md"), "single": r"seed\d+", "cv": r"draw\d+",
           "folds": r"draw\d+"}
    return run_folder.foreign_entry(out, own, "aa_check.md", lambda line: line.startswith("A/A check: "))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=30,
                        help=f"single split: runs with seeds 0..M-1, 2 to {MAX_SEEDS} (default: 30)")
    parser.add_argument("--comparisons", type=int, default=20,
                        help=f"cross-validation: fold draws, one comparison each, up to {MAX_SEEDS}; 0 checks the "
                             "single split only (default: 20)")
    parser.add_argument("--fold-seeds", type=int, default=2,
                        help=f"cross-validation: seeds trained on each fold draw, 2 to {SEED_STRIDE}; beyond 2, "
                             "every pair of them is compared too (default: 2)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every run (default: the task's own, 20)")
    parser.add_argument("--data", type=Path, default=None,
                        help="single split: a split folder (default: the demo split)")
    parser.add_argument("--images", type=Path, default=DEMO_IMAGES,
                        help="cross-validation: a folder of class folders to draw the folds from "
                             "(default: the demo images)")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="a random-init backbone instead of ImageNet weights (for quick tests)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "aa_check",
                        help="folder for the runs, the folds and aa_check.md (default: results/aa_check)")
    args = parser.parse_args(argv)
    ranges = (("--seeds", args.seeds, 2, MAX_SEEDS), ("--comparisons", args.comparisons, 0, MAX_SEEDS),
              ("--fold-seeds", args.fold_seeds, 2, SEED_STRIDE))
    for option, value, low, high in ranges:
        if not low <= value <= high:
            raise UserError(f"{option} {value}: give {low} to {high}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: need at least 1")
    check_folder_writable(args.out, "--out")
    entry = foreign_entry(args.out)
    if entry:
        raise UserError(f"--out {args.out} holds {entry.relative_to(args.out)}, which the A/A check did not write: "
                        "pick a new folder, or one the check made")
    return args


def main(argv=None):
    args = parse_args(argv)
    task = tasks.load(TASK)
    correct = single_split_correct(task, args)
    cv = cv_accuracies(task, args) if args.comparisons else None
    table = report(args.epochs or task.epochs, correct, cv)
    atomic_write(args.out / "aa_check.md", table)
    print(table)


if __name__ == "__main__":
    run_main(main)
