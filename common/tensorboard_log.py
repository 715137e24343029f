"""TensorBoard event files in the run folder: while the run trains, each epoch's row of history.csv
as scalars; at its end the test metrics as hparams beside the run's settings, and the test confusion
matrix as an image. `tensorboard --logdir results/reproduce` then shows every task, repetition and
fold side by side. Without the tensorboard package a run warns once and writes no events."""
import numbers

import numpy as np
from PIL import Image

from common.errors import warn
from common.folds import fold_number

# history.csv's columns as TensorBoard tags: train and validation of a metric share its section
SCALARS = {"train_loss": "logloss/train", "val_loss": "logloss/validation",
           "train_top1": "top1/train", "val_top1": "top1/validation",
           "train_top3": "top3/train", "val_top3": "top3/validation", "lr": "learning_rate"}
TEST_METRICS = {"loss": "test/logloss", "top1": "test/top1", "top3": "test/top3"}


def summary_writer(out, purge_step):
    """A SummaryWriter on `out`, or None (one warning) without the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it where tensorboard is not installed
        warn("the tensorboard package is not installed, so this run writes no TensorBoard events "
             "(pip install -r requirements.txt installs it)")
        return None
    return SummaryWriter(str(out), purge_step=purge_step)


def hparam(value):
    """A setting as the hparams plugin takes it: a number, a bool or a string (a path or None as text)."""
    return value if isinstance(value, (bool, str, numbers.Number)) else str(value)


def run_hparams(config, data):
    """What tells the runs apart in TensorBoard's hparams table: the task, every option, the seed and the fold."""
    fold = fold_number(data)
    return {"task": config["task"], **{name: hparam(v) for name, v in config["arguments"].items()},
            "fold": -1 if fold is None else fold}  # -1: trained on one split, not a fold


class EventLog:
    """The run's events, written by rank 0 alone (writer None elsewhere, or with --no-tensorboard).

    A resumed run starts its file by purging every step from 1 on and logs its history again, so
    whatever an interrupted process wrote or did not, the events end equal to history.csv."""

    def __init__(self, out, enabled, history=()):
        self.writer = summary_writer(out, purge_step=1) if enabled else None
        for row in history:
            self.epoch(row)

    def epoch(self, row):
        if self.writer is None:
            return
        for column, tag in SCALARS.items():
            self.writer.add_scalar(tag, row[column], global_step=row["epoch"])
        self.writer.flush()  # watched live: each epoch is on disk once it is done

    def finish(self, config, data, metrics, epochs, confusion_png):
        """The test metrics as hparams, with the run's settings (one session in the hparams plugin),
        and the confusion matrix image, all at the last epoch's step."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams
        scores = {tag: metrics["test"][name] for name, tag in TEST_METRICS.items()}
        for summary in hparams(run_hparams(config, data), scores):
            self.writer.file_writer.add_summary(summary, epochs)
        for tag, value in scores.items():
            self.writer.add_scalar(tag, value, global_step=epochs)
        with Image.open(confusion_png) as picture:
            self.writer.add_image("test/confusion_matrix", np.asarray(picture.convert("RGB")), epochs,
                                  dataformats="HWC")

    def close(self):
        if self.writer is not None:
            self.writer.close()
