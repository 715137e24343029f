"""RunConfig: one run's settings, typed. Built once, from the command line (common/options.py) or
from a run's config.json (predict.py); the loop, the models, the features and the resume key read it."""
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError

MAX_BATCH = 2 ** 31 - 1
SEEDS = 2 ** 32  # numpy's seed range, 0 .. 2**32 - 1
MAX_SEEDS = 1000  # runs per task or study config, seeds 0..N-1 (reproduce.py and studies/study.py --seeds)
# Settings that leave the experiment as it is: where the run goes, whether it resumes or replaces an
# earlier one, how long it trains (a shorter run grows by resuming), and the device and compilation,
# which change rounding only. The resume key and reuse compare every other setting.
NOT_EXPERIMENT = frozenset({"out", "resume", "force", "epochs", "device", "compile"})


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    task: str            # the task's name: its script's module
    data: Path = None    # a split folder; None: the demo split
    out: Path            # the run folder
    epochs: int
    batch_size: int
    lr: float = 1e-3     # Adam's
    gamma: float = 0.9   # StepLR's factor after every epoch
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    augment: bool = False
    resume: bool = False
    force: bool = False
    compile: str = "off"
    options: dict = field(default_factory=dict)  # the task's own (--clusters, --weights, ...), by their names

    def arguments(self):
        """Every setting by its option's name (batch_size for --batch-size), as config.json records them."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("task", "options")}
        return {**shared, **self.options}

    def experiment(self):
        """The settings that define the experiment (all but NOT_EXPERIMENT), by their options' names."""
        return {name: value for name, value in self.arguments().items() if name not in NOT_EXPERIMENT}

    @classmethod
    def from_arguments(cls, task, arguments):
        """From argparse's namespace (as a dict) or config.json's "arguments": the shared settings by
        name, the rest are the task's own options."""
        shared = {f.name for f in dataclasses.fields(cls)} - {"task", "options"}
        values = {name: value for name, value in arguments.items() if name in shared}
        for name in ("out", "data"):
            if values.get(name) is not None:
                values[name] = Path(values[name])
        options = {name: value for name, value in arguments.items() if name not in shared}
        return cls(task=task, options=options, **values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def check(self):
        """Every shared setting in range, before anything is read or written (named as its option)."""
        checks = (("epochs", self.epochs >= 1, "at least 1"),
                  ("batch-size", 1 <= self.batch_size <= MAX_BATCH, f"from 1 to {MAX_BATCH}"),
                  ("lr", math.isfinite(self.lr) and self.lr > 0, "a positive finite number"),
                  ("gamma", 0 < self.gamma <= 1, "a number in (0, 1]"),  # also false for nan
                  ("seed", 0 <= self.seed < SEEDS, f"from 0 to {SEEDS - 1}"))
        for name, ok, expected in checks:
            if not ok:
                raise UserError(f"--{name} {getattr(self, name.replace('-', '_'))} is out of range: give {expected}")
        if self.resume and self.force:
            raise UserError("--resume and --force contradict each other: pick one")


# Checks of the values a saved file holds (it may be hand-edited): config.json, a checkpoint's plain data.
def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int_in(low, high):
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_bool(value):
    return isinstance(value, bool)


def is_one_of(*choices):
    return lambda value: isinstance(value, str) and value in choices
