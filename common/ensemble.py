"""A cross-validated repetition's fold runs as one model: which runs they are, and how their
predictions combine (predict.py rebuilds each run's model)."""
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from common.data import sub_folders
from common.errors import UserError, shown
from common.files import read_json
from common.folds import FOLDS, read_folds
from common.reuse import finished_metrics
from common.train import Meter

FOLD = re.compile(r"fold(0|[1-9][0-9]*)")  # reproduce.py's OUT/<task>/rep<R>/fold<K>


def run_folders(run_dir):
    """The run folders predict.py's RUN_DIR stands for: itself, or a cross-validated repetition's fold runs."""
    if (run_dir / "config.json").exists() or not run_dir.is_dir():
        return [run_dir]
    return fold_runs(run_dir) or [run_dir]  # neither: reading its config.json says that it has none


def fold_runs(folder):
    """The fold runs fold0, fold1, ... in `folder` (a repetition's), in order; [] where it holds none.
    Every fold from 0 to the highest must be there and finished: a missing one would leave out the
    model trained without its images, and an unfinished one's weights are not its final model."""
    folds = {int(match[1]): path for path in sub_folders(folder) if (match := FOLD.fullmatch(path.name))}
    if not folds:
        return []
    missing = [k for k in range(max(max(folds) + 1, 2)) if k not in folds]  # cross-validation has 2 folds or more
    if missing:
        raise UserError(f"{shown(folder)} has no fold run {', '.join(f'fold{k}' for k in missing)}: "
                        "predict once every fold's run is there, or with one fold's run alone")
    runs = [folds[k] for k in sorted(folds)]
    drawn = folds_drawn(runs[0])
    if drawn and len(runs) != drawn:  # the last folds' runs are missing (or runs of more folds are there)
        raise UserError(f"{shown(folder)} holds {len(runs)} fold runs, but its runs trained on {drawn} folds: "
                        "predict once every fold's run is there, or with one fold's run alone")
    unfinished = next((run for run in runs if finished_metrics(run) is None), None)
    if unfinished is not None:
        raise UserError(f"{shown(unfinished)} is not a finished run (no metrics.json): let it finish "
                        "(reproduce.py continues it), or predict with one finished fold's run alone")
    return runs


def folds_drawn(run):
    """How many folds the set that `run` trained on has (its folds.csv says), or None where that is unknown
    (a run trained on a folder of one's own)."""
    try:
        folds = Path(read_json(run / "config.json")["arguments"]["data"]).parent
        return read_folds(folds, "")[0]["k"] if (folds / FOLDS).is_file() else None
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None


def check_alike(runs):
    """Fold runs [(folder, task name, classes)] must be of one task and have the same classes in the same
    order: else their class probabilities are not of the same things."""
    first, task, classes = runs[0]
    for folder, other_task, other_classes in runs[1:]:
        if other_task != task:
            raise UserError(f"{shown(folder)} is a run of {other_task}, {shown(first)} of {task}: "
                            "the fold runs of one repetition are of one task")
        if other_classes != classes:
            raise UserError(f"{shown(folder)} has other classes than {shown(first)} (or in another order): "
                            "the fold runs of one repetition share their classes")


def combined(outputs, labels):
    """(metrics, N x C log-probabilities) of the ensemble of models whose (metrics, log-probabilities)
    on the same images are `outputs`. One model's come back as they are: its numbers to the last bit."""
    if len(outputs) == 1:
        return outputs[0]
    # The mean of the probabilities, the usual ensemble average, which stays a probability (the mean of
    # log-probabilities would not sum to 1); logsumexp computes it in log space without underflow.
    log_probs = torch.logsumexp(torch.stack([log_probs for _, log_probs in outputs]), dim=0) - math.log(len(outputs))
    meter = Meter()
    meter.add(log_probs, labels, F.nll_loss(log_probs, labels, reduction="sum"))
    return meter.result(), log_probs
