"""Task: what a task script declares about its task, once. reproduce.py, predict.py, the report and
the studies read these declarations (tasks.py finds them); the script itself only calls run_task."""
from dataclasses import dataclass, field
from typing import Callable


def report_table(train, validation, test):
    """The 2020 report's table for a task, each row (logloss, top-1, top-3)."""
    return {split: dict(zip(("loss", "top1", "top3"), values))
            for split, values in zip(("train", "validation", "test"), (train, validation, test))}


@dataclass(frozen=True)
class Prepared:
    """What a task trains: its model, the run it trains on (task 1's frozen runs train on features)
    and what config.json records beyond the settings."""
    model: object
    run: object
    extra_config: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, to key dicts
class Task:
    name: str                # its script's module: results/<name>, reproduce.py --tasks <name>
    title: str               # the model as tables and figures name it (describe adds what its options change)
    epochs: int              # the 2020 report's
    batch_size: int          # the 2020 report's
    # (RunConfig, number of classes) -> the network its checkpoints hold, freshly initialised (after seeding)
    build_model: Callable
    description: str = ""    # --help's text
    add_options: Callable = None    # (argparse parser) -> None: the task's own options
    check_options: Callable = None  # (RunConfig) -> None, raises UserError: on the command line and in predict.py
    saved_fields: dict = field(default_factory=dict)  # config.json field -> (check, what it must be), for predict.py
    prepare: Callable = None        # (run) -> Prepared; default: build_model on the run's classes
    input_network: Callable = None  # predict.py: (config.json, --weights) -> the network making the model's
                                    # inputs from images (task 1's frozen backbone), or None
    describe: Callable = None       # (RunConfig) -> the title with what its options change
    compiles: bool = False   # offers --compile (long enough training to repay compilation)
    cpu_bf16: bool = True    # --precision auto may pick bf16 on a CPU (False where bf16 slows the model)
    reproduce_argv: tuple = ()  # the options reproduce.py runs it with (task 3: --clusters 16)
    course_report: dict = None  # the 2020 report's table (report_table), where it has one
    former_names: tuple = ()    # the "task" its earlier runs' config.json may hold
    in_reproduction: bool = True  # reproduce.py runs it by default (else only when --tasks names it)

    def title_for(self, config):
        """The title every output of a run carries."""
        title = self.describe(config) if self.describe else self.title
        return title + ", augmented" if config.augment else title
