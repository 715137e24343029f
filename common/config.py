"""RunConfig: one run's settings, typed, each declared once (`option`): its type, default, range or
choices and help. The command line (common/options.py), config.json's "arguments", the resume key,
reuse's comparison and predict.py's reading of a saved run are all derived from the declarations."""
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from common.runtime import COMPILE_MODES, PRECISIONS

MAX_BATCH = 2 ** 31 - 1
SEEDS = 2 ** 32  # numpy's seed range, 0 .. 2**32 - 1
MAX_SEEDS = 1000  # runs per task or study config, seeds 0..N-1 (reproduce.py and studies/study.py --seeds)
# Settings that leave the experiment as it is: where the run goes, whether it resumes or replaces an
# earlier one, how long it trains (a shorter run grows by resuming), the device and compilation,
# which change rounding only, and whether it writes TensorBoard events. The resume key and reuse compare every other setting.
NOT_EXPERIMENT = frozenset({"out", "resume", "force", "epochs", "device", "compile", "no_tensorboard"})


def option(default=dataclasses.MISSING, help="", *, choices=None, check=None, metavar=None):
    """A field that is a command-line option (--name for the field name): bool is a flag, `X | None`
    optional. check: (is it in range, what to give instead), e.g. (lambda v: v >= 1, "at least 1")."""
    return field(default=default, metadata={"help": help, "choices": choices, "check": check, "metavar": metavar})


def declared(options):
    """(field, its type with `| None` taken off, whether None is allowed) of every option that the
    dataclass (or instance) `options` declares."""
    hints = typing.get_type_hints(options if isinstance(options, type) else type(options))
    found = []
    for f in dataclasses.fields(options):
        if "help" in f.metadata:
            kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)] or [hints[f.name]]
            found.append((f, kinds[0], type(None) in typing.get_args(hints[f.name])))
    return found


@dataclass(frozen=True)
class NoOptions:
    """The options of a task that has none of its own."""


TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}


def misfit(f, kind, optional, value):
    """What a saved value (plain JSON, perhaps hand-edited) of the option should be, or None where it fits."""
    fits = {int: lambda v: isinstance(v, int) and not isinstance(v, bool), bool: lambda v: isinstance(v, bool),
            float: is_number}.get(kind, lambda v: isinstance(v, str))  # str, or Path as JSON holds it
    if value is None and optional:
        return None
    if not fits(value):
        return TYPE_NAMES[kind] + (" or null" if optional else "")
    choices, check = f.metadata["choices"], f.metadata["check"]
    if choices and value not in choices:
        return "one of " + ", ".join(choices)
    return check[1] if check and not check[0](value) else None


def out_of_range(options):
    """The first declared option whose value is out of range, as one line; None where all are in range."""
    for f, _, _ in declared(options):
        value, check = getattr(options, f.name), f.metadata["check"]
        if check and value is not None and not check[0](value):
            return f"--{f.name.replace('_', '-')} {value} is out of range: give {check[1]}"
    return None


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    task: str            # the task's name: its script's module
    data: Path | None = option(None, "split folder holding train/, validation/ and test/, each with one folder per "
                                     "class (default: the demo split data/demo_split, made from demo_data/images "
                                     "when missing)")
    out: Path = option(help="folder for tables, plots, config and checkpoints (default: %(default)s)")
    epochs: int = option(help="training epochs (default: %(default)s)", check=(lambda v: v >= 1, "at least 1"))
    batch_size: int = option(help="batch size (default: %(default)s)",
                             check=(lambda v: 1 <= v <= MAX_BATCH, f"from 1 to {MAX_BATCH}"))
    lr: float = option(1e-3, "Adam learning rate (default: 1e-3)",
                       check=(lambda v: math.isfinite(v) and v > 0, "a positive finite number"))
    gamma: float = option(0.9, "StepLR factor applied to the learning rate after every epoch (default: 0.9)",
                          check=(lambda v: 0 < v <= 1, "a number in (0, 1]"))  # also false for nan
    seed: int = option(0, f"seed for initialisation, batch order and dropout, 0 to {SEEDS - 1} (default: 0)",
                       check=(lambda v: 0 <= v < SEEDS, f"from 0 to {SEEDS - 1}"))
    device: str = option("auto", "cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)")
    precision: str = option("auto", "auto = bf16 autocast on CPUs with AMX (not for task 3, which it slows) and "
                                    "bf16-capable GPUs, fp32 elsewhere; fp32 turns mixed precision off (default: auto)",
                            choices=PRECISIONS)
    augment: bool = option(False, "train on randomly resized crops (35-100 %% of the area) and horizontal flips of "
                                  "the training images; evaluation stays resize 256 / centre crop 224 (default: off)")
    resume: bool = option(False, "continue the run in --out from its last checkpoint (refused if any setting differs)")
    force: bool = option(False, "replace the results of an earlier run in --out")
    no_tensorboard: bool = option(False, "write no TensorBoard event files into --out (by default each epoch's "
                                         "metrics are logged there for `tensorboard --logdir`)")
    # offered by the tasks whose training is long enough to repay compilation (Task.compiles)
    compile: str = option("off", "torch.compile the model: auto = where it can run (a C++ compiler on the CPU, or "
                                 "CUDA), else eager with a warning; it costs some seconds once and rounds differently "
                                 "from eager (default: auto)", choices=COMPILE_MODES)
    options: object = field(default_factory=NoOptions)  # the task's own (Task.options): config.options.clusters

    def arguments(self):
        """Every setting by its option's name (batch_size for --batch-size), the task's own included,
        as config.json records them."""
        return {f.name: getattr(settings, f.name) for settings in (self, self.options) for f, _, _ in declared(settings)}

    def experiment(self):
        """The settings that define the experiment (all but NOT_EXPERIMENT), by their options' names."""
        return {name: value for name, value in self.arguments().items() if name not in NOT_EXPERIMENT}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def check(self):
        """Every setting in range, before anything is read or written (named as its option)."""
        problem = out_of_range(self) or out_of_range(self.options)
        if problem:
            raise UserError(problem)
        if self.resume and self.force:
            raise UserError("--resume and --force contradict each other: pick one")


# Checks of the values a saved file holds (it may be hand-edited): config.json, a checkpoint's plain data.
def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_bool(value):
    return isinstance(value, bool)
