"""Studies under 5-fold cross-validation (or over seeds on one split), as Markdown tables (mean ±
sample std), paired tests and, for augmentation, one figure.

  netvlad   Does NetVLAD help? Task 2 against task 3 (k-means init, K = 4, 16, 64, and the report's
            init, K = 4).
  augment   Does the report's proposed augmentation help, and does fine-tuning beat a frozen backbone?
            Task 2 and task 3 (K = 16) without and with --augment; EfficientNet-Lite0 frozen, frozen
            with --augment, and fine-tuned (--finetune).
  precision Does bf16 autocast change the metrics? Task 2 and EfficientNet-Lite0 (frozen) with
            --precision auto, fp32 and bf16.
  backbones Does a bigger pretrained backbone transfer better, and does fine-tuning change the ranking?
            EfficientNet-Lite0, Lite1 and Lite2, frozen and fine-tuned.

By default every config trains on each of 5 folds of the demo images (data/demo_folds5, made the
first time): every image is a test image once, and configs are compared fold by fold with the
corrected repeated k-fold t-test (docs/statistics.md). --data takes a folds folder of your own
(data_split.py SRC DEST --folds K) or one split folder (then the study runs --seeds seeds on it).
Every run keeps its task's epochs (the 2020 report's: 20 for task 1, 100 for tasks 2 and 3) unless
--epochs is given, and goes to OUT/<config>/seed<N>/fold<K> (OUT/<config>/seed<N> on one split)
with its console output in log.txt; a finished run (metrics.json) is reused, an interrupted or
shorter one resumed, so a study can be stopped, restarted and extended. The tables cover every
config with finished runs in OUT, so a slow config can run by a second command (--configs
netvlad_k64) and still appear.
OUT is a new folder or one the same study made: one holding anything else is refused, not written to.

    python studies/study.py netvlad                        # 5 folds, the report's schedule
    python studies/study.py netvlad --gamma 1 --configs shallow netvlad_k16   # constant learning rate
    python studies/study.py augment                        # also writes OUT/augment.png
    python studies/study.py precision --folds 1 --seeds 5  # one split, seeds 0-4
"""
import argparse
import re
import sys
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script's own folder is on sys.path, not the repository root
import tasks  # noqa: E402
from common.cli import UserError, run_main  # noqa: E402
from common.config import MAX_SEEDS  # noqa: E402
from common.demo import default_folds  # noqa: E402
from common.evidence import read_evidence  # noqa: E402
from common.files import atomic_files, atomic_write  # noqa: E402
from common import results  # noqa: E402
from common.report import p_cell  # noqa: E402
from common.report_task import run_history  # noqa: E402
from common.reuse import finished_metrics, read_config, run_or_reuse  # noqa: E402
from common import run_folder  # noqa: E402
from common.run_folder import check_folder_writable  # noqa: E402
from common.folds import FOLDS, MAX_FOLDS, fold_folders  # noqa: E402
from common.scores import holm  # noqa: E402
from common.stats import supported  # noqa: E402

# config -> (task, its settings by name: shared ones and its own); each trains for its task's epochs
STUDIES = {
    "netvlad": {
        "shallow": ("task2_shallow", {}),
        "netvlad_k4": ("task3_netvlad", {"clusters": 4}),
        "netvlad_k16": ("task3_netvlad", {"clusters": 16}),
        "netvlad_k64": ("task3_netvlad", {"clusters": 64}),
        "netvlad_k4_report_init": ("task3_netvlad", {"clusters": 4, "init": "random"}),
    },
    "augment": {
        "shallow": ("task2_shallow", {}),
        "shallow_augment": ("task2_shallow", {"augment": True}),
        "netvlad_k16": ("task3_netvlad", {"clusters": 16}),
        "netvlad_k16_augment": ("task3_netvlad", {"clusters": 16, "augment": True}),
        "lite0_frozen": ("task1_efficientnet", {}),
        "lite0_frozen_augment": ("task1_efficientnet", {"augment": True}),
        "lite0_finetuned": ("task1_efficientnet", {"finetune": True}),
    },
    "precision": {  # "auto" is bf16 on CPUs with AMX and on bf16 GPUs, else fp32 (config.json says which)
        "shallow": ("task2_shallow", {}),
        "shallow_fp32": ("task2_shallow", {"precision": "fp32"}),
        "shallow_bf16": ("task2_shallow", {"precision": "bf16"}),
        "lite0_frozen": ("task1_efficientnet", {}),
        "lite0_frozen_fp32": ("task1_efficientnet", {"precision": "fp32"}),
        "lite0_frozen_bf16": ("task1_efficientnet", {"precision": "bf16"}),
    },
    "backbones": {
        "lite0_frozen": ("task1_efficientnet", {}),
        "lite1_frozen": ("task1_efficientnet_lite1", {}),
        "lite2_frozen": ("task1_efficientnet_lite2", {}),
        "lite0_finetuned": ("task1_efficientnet", {"finetune": True}),
        "lite1_finetuned": ("task1_efficientnet_lite1", {"finetune": True}),
        "lite2_finetuned": ("task1_efficientnet_lite2", {"finetune": True}),
    },
}
# the questions each study asks: (A, B) prints B minus A, paired on the same test images, folds and seeds
COMPARISONS = {
    "netvlad": [("shallow", "netvlad_k4"), ("shallow", "netvlad_k16"), ("shallow", "netvlad_k64"),
                ("shallow", "netvlad_k4_report_init"), ("netvlad_k4", "netvlad_k4_report_init"),
                ("netvlad_k4", "netvlad_k16"), ("netvlad_k16", "netvlad_k64")],
    "augment": [("shallow", "shallow_augment"), ("netvlad_k16", "netvlad_k16_augment"),
                ("lite0_frozen", "lite0_frozen_augment"), ("lite0_frozen", "lite0_finetuned")],
    "precision": [("shallow_fp32", "shallow_bf16"), ("shallow", "shallow_fp32"), ("shallow", "shallow_bf16"),
                  ("lite0_frozen_fp32", "lite0_frozen_bf16"), ("lite0_frozen", "lite0_frozen_fp32"),
                  ("lite0_frozen", "lite0_frozen_bf16")],
    "backbones": [("lite0_frozen", "lite1_frozen"), ("lite0_frozen", "lite2_frozen"), ("lite1_frozen", "lite2_frozen"),
                  ("lite0_finetuned", "lite1_finetuned"), ("lite0_finetuned", "lite2_finetuned"),
                  ("lite1_finetuned", "lite2_finetuned"), ("lite0_frozen", "lite0_finetuned"),
                  ("lite1_frozen", "lite1_finetuned"), ("lite2_frozen", "lite2_finetuned")],
}
# augment.png: a panel per row, its configs drawn solid, dashed, dotted
FIGURE_PANELS = (("shallow", "shallow_augment"), ("netvlad_k16", "netvlad_k16_augment"),
                 ("lite0_frozen", "lite0_frozen_augment", "lite0_finetuned"))
LINE_STYLES = ("-", "--", ":")
DEFAULT_FOLDS = 5
DEFAULT_SEEDS = {True: 1, False: 5}  # cross-validated: one seed on every fold; one split: seeds 0-4


def run_path(out, name, seed, fold):
    """Where a config's run of `seed` on fold `fold` (None: on one split) goes."""
    folder = out / name / f"seed{seed}"
    return folder if fold is None else folder / f"fold{fold}"


def finished_runs(folder, epochs, folds=None):
    """The finished runs of `epochs` in a config's folder, seed 0, 1, ... up to the first gap: each
    seed's run, or (`folds`: the fold count) each seed's runs on every fold, in fold order."""
    runs = []
    for seed in range(MAX_SEEDS):
        seed_runs = [run_path(folder.parent, folder.name, seed, fold) for fold in (range(folds) if folds else [None])]
        if not all(finished(run, epochs) for run in seed_runs):
            return runs
        runs += seed_runs
    return runs


def finished(run, epochs):
    config = read_config(run)
    return config is not None and config["arguments"]["epochs"] == epochs and finished_metrics(run) is not None


def tables(metrics, folds=None):
    """Mean ± std of test metrics and train top-1 per config over its runs, then every run's test top-1
    (`folds`: the fold count, cross-validated)."""
    lines = ["| config | test top-1 | test top-3 | test logloss | train top-1 | runs |", "|---|---:|---:|---:|---:|---:|"]
    for name, runs in metrics.items():
        stats = results.mean_std(runs)
        test = stats["test"]
        lines.append(f"| {name} | {results.format_cell(test['top1'], 2, ' %')} | {results.format_cell(test['top3'], 2, ' %')} "
                     f"| {results.format_cell(test['loss'], 4)} | {results.format_cell(stats['train']['top1'], 1, ' %')} "
                     f"| {len(runs)} |")
    most = max(len(r) for r in metrics.values())
    names = [f"seed {i // folds} fold {i % folds}" if folds else f"seed {i}" for i in range(most)]
    lines += ["", "Test top-1 per run:", "", "| config | " + " | ".join(names) + " |", "|---|" + "---:|" * most]
    for name, runs in metrics.items():
        cells = [f"{m['test']['top1']:.2f} %" for m in runs] + ["–"] * (most - len(runs))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evidence_table(folders, comparisons, folds=None):
    """Each config's test top-1 with its 95 % interval, then each of the study's comparisons that both
    configs have runs for: B minus A, paired on the same images, folds and seeds, with Holm's adjusted
    p over the study's comparisons (one family), and whether the data support it (docs/statistics.md)."""
    found = {}
    for name, runs in folders.items():
        try:
            found[name] = read_evidence(runs, folds or 1)
        except (OSError, ValueError) as e:  # runs made before they wrote test_predictions.csv
            print(f"{name}: no interval or paired test ({e})")
    if not found:
        return ""
    lines = ["| config | test top-1 [95 % interval] | runs |", "|---|---:|---:|"]
    for name, evidence in found.items():
        mean, low, high = evidence.interval()
        lines.append(f"| {name} | {mean:.2f} % [{low:.1f}, {high:.1f}] | {len(folders[name])} |")
    asked = [(a, b) for a, b in comparisons if a in found and b in found and found[a].tested_like(found[b])]
    tested = [found[b].compare(found[a]) for a, b in asked]
    adjusted = holm([p for *_, p in tested])
    lines += ["", f"Holm p adjusts p for the {len(asked)} comparison{'s' * (len(asked) != 1)} below (those of the "
              "study's questions with runs); a difference is supported where Holm p < 0.05, otherwise inconclusive.", "",
              "| B minus A | points [95 % interval] | p | Holm p | runs paired | the data |", "|---|---:|---:|---:|---:|---|"]
    for (a, b), (difference, low, high, p), q in zip(asked, tested, adjusted):
        paired = min(len(found[a].labels), len(found[b].labels)) * (folds or 1)
        verdict = "supported" if supported(low, high, q) else "inconclusive"
        lines.append(f"| {b} minus {a} | {difference:+.2f} [{low:+.1f}, {high:+.1f}] | {p_cell(p)} | {p_cell(q)} | "
                     f"{paired} | {verdict} |")
    return "\n".join(lines)


def history(run, epochs):
    """A finished run's history.csv, checked as reproduce.py checks a reused run's; one line naming it
    where it is missing or damaged."""
    try:
        return run_history(run, epochs)
    except UserError:  # its advice is reproduce.py's --force, which the studies do not have
        raise UserError(f"{run / 'history.csv'} is missing or damaged: move {run} away to train that run again, "
                        "or use another --out") from None


def plot_augmentation(path, folders, run_epochs):
    """Train and validation top-1 over epochs per config of each panel: the mean over runs, and a
    band of ± one sample standard deviation where there are several runs. run_epochs: each config's.
    Returns False, drawing nothing, where no panel has two configs with finished runs."""
    panels = [[name for name in panel if folders.get(name)] for panel in FIGURE_PANELS]
    panels = [panel for panel in panels if len(panel) > 1]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for name, style in zip(panel, LINE_STYLES):
            histories = [history(folder, run_epochs[name]) for folder in folders[name]]
            epochs = [int(row["epoch"]) for row in histories[0]]
            for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
                curves = np.array([[float(row[f"{split}_top1"]) for row in h[:len(epochs)]] for h in histories])
                mean = curves.mean(axis=0)
                ax.plot(epochs, mean, style, color=color, label=f"{name}: {'validation' if split == 'val' else split}")
                if len(curves) > 1:
                    spread = curves.std(axis=0, ddof=1)
                    ax.fill_between(epochs, mean - spread, mean + spread, color=color, alpha=0.12, linewidth=0)
        runs = " / ".join(str(len(folders[name])) for name in panel)
        ax.set(xlabel="epoch", ylabel="top-1 (%)", ylim=(0, 101),
               title=f"{' / '.join(panel)}\ntop-1, mean ± std over {runs} runs")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    results.save_figure(fig, path)
    return True


def foreign_entry(out, study):
    """The first entry of `out` that the study did not write, or None (as reproduce.py's): study.md
    counts as ours only if it opens with the line this study writes."""
    configs = STUDIES[study]
    own = {".": "|".join([*map(re.escape, configs), atomic_files("study.md", "augment.png")]),
           **{name: r"seed\d+" for name in configs}}
    header = re.compile(rf"{study}: (\d+ epochs|each task's epochs), --gamma \S+(, .*)?\n")
    return run_folder.foreign_entry(out, own, "study.md", header.fullmatch)


def parse_args(argv):
    """The study's options, every number in range and --out new or the study's own; creates nothing."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=list(STUDIES))
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help=f"without --data: the demo images in K folds (data/demo_folds<K>), or 1 for the demo "
                             f"split; with --data, the folder says (default: {DEFAULT_FOLDS})")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds 0..N-1 per config, each on every fold, 1 to {MAX_SEEDS} (default: "
                             f"{DEFAULT_SEEDS[True]} cross-validated, {DEFAULT_SEEDS[False]} on one split)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: each task's own)")
    parser.add_argument("--gamma", type=float, default=0.9,
                        help="StepLR factor of every run (default: 0.9, the report's; 1 = constant learning rate)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a folds folder (data_split.py SRC DEST --folds K) or one split folder (default: the "
                             "demo images in 5 folds)")
    parser.add_argument("--out", type=Path, default=None,
                        help="study folder: a new one, or one this study made (default: results/<study>_study, "
                             "or results/<study>_study_gamma<G>)")
    parser.add_argument("--configs", nargs="+", default=None, metavar="CONFIG",
                        help="train only these configs (default: all of the study's); e.g. a slow one with fewer --seeds")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.configs or []) - set(STUDIES[args.study]))
    if unknown:
        raise UserError(f"{args.study} has no config {', '.join(unknown)}; it has {', '.join(STUDIES[args.study])}")
    if args.folds is not None and not 1 <= args.folds <= MAX_FOLDS:
        raise UserError(f"--folds {args.folds}: give 1 (one split) to {MAX_FOLDS}")
    if args.data is not None and args.folds is not None:
        raise UserError("--folds is for the demo data: --data is a folds folder (data_split.py --folds K) or one "
                        "split, and says which itself")
    args.cross_validated = (args.data / FOLDS).exists() if args.data else (args.folds or DEFAULT_FOLDS) > 1
    args.seeds = DEFAULT_SEEDS[args.cross_validated] if args.seeds is None else args.seeds
    if not 1 <= args.seeds <= MAX_SEEDS:
        raise UserError(f"--seeds {args.seeds}: give 1 to {MAX_SEEDS}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: need at least 1")
    suffix = "" if args.gamma == 0.9 else f"_gamma{args.gamma:g}"
    args.out = args.out or REPO / "results" / f"{args.study}_study{suffix}"
    check_folder_writable(args.out, "--out")
    entry = foreign_entry(args.out, args.study)
    if entry:
        raise UserError(f"--out {args.out} holds {entry.relative_to(args.out)}, which the {args.study} study did not "
                        "write: pick a new folder, or one this study made")
    other_design = "seed*/config.json" if args.cross_validated else "seed*/fold*"
    if any(args.out.glob(f"*/{other_design}")):  # one design per study folder: its tables pool them
        raise UserError(f"--out {args.out} holds runs {'on one split' if args.cross_validated else 'on folds'}: "
                        "pick another --out for this design")
    return args


def data_folders(args):
    """The folders the runs train on: one per fold, by its index; or the one split, by None (the
    demo split where --data is not given, as the task scripts default to)."""
    if not args.cross_validated:
        return {None: args.data}
    return dict(enumerate(fold_folders(args.data) if args.data else default_folds(args.folds or DEFAULT_FOLDS)))


def main(argv=None):
    args = parse_args(argv)
    configs, out = STUDIES[args.study], args.out
    data = data_folders(args)
    folds = len(data) if args.cross_validated else None
    jobs = [(seed, name, fold) for seed in range(args.seeds) for name in args.configs or configs for fold in data]
    for seed, name, fold in tqdm(jobs, desc="runs", unit="run"):  # a whole seed first, a config's folds together
        task, settings = tasks.load(configs[name][0]), configs[name][1]
        run_or_reuse(task, task.config(**settings, data=data[fold], gamma=args.gamma, seed=seed,
                                       out=run_path(out, name, seed, fold), epochs=args.epochs or task.epochs))
    epochs = {name: args.epochs or tasks.load(task).epochs for name, (task, _) in configs.items()}
    folders = {name: finished_runs(out / name, epochs[name], folds) for name in configs}
    folders = {name: runs for name, runs in folders.items() if runs}
    report = tables({name: [finished_metrics(f) for f in runs] for name, runs in folders.items()}, folds)
    report += "\n\n" + evidence_table(folders, COMPARISONS[args.study], folds)
    schedule = f"{args.epochs} epochs" if args.epochs else "each task's epochs"
    design = f"{folds}-fold cross-validation" if folds else "one split"
    atomic_write(out / "study.md", f"{args.study}: {schedule}, --gamma {args.gamma:g}, {design}\n\n{report}\n")
    print(report)
    if args.study == "augment":
        if plot_augmentation(out / "augment.png", folders, epochs):
            print(f"wrote {out / 'augment.png'}")
        else:  # one config alone (--configs shallow) has nothing to compare with
            print(f"no {out / 'augment.png'}: no config has finished runs beside its --augment or fine-tuned twin")


if __name__ == "__main__":
    run_main(main)
