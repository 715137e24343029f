"""Task: what a task script declares about its task, once. reproduce.py, predict.py, the report and
the studies read these declarations (tasks.py finds them); the script itself only calls run_task."""
from dataclasses import dataclass, field
from typing import Callable

from common.config import NoOptions, RunConfig, declared
from common.paths import RESULTS


def report_table(train, validation, test):
    """The 2020 report's table for a task, each row (logloss, top-1, top-3)."""
    return {split: dict(zip(("loss", "top1", "top3"), values))
            for split, values in zip(("train", "validation", "test"), (train, validation, test))}


@dataclass(frozen=True)
class Prepared:
    """What a task trains: its model, the run it trains on (task 1's frozen runs train on features),
    what config.json records beyond the settings and what the resume key adds to them (what is known
    only once loaded, e.g. task 1's weights fingerprint), and the whole model an image goes through,
    for architecture.md (task 1 frozen: backbone and head; None: the model); pictures(model, run,
    title) draws the task's own figures into the run folder once it is trained (task 3's cluster maps)."""
    model: object
    run: object
    extra_config: dict = field(default_factory=dict)
    key: dict = field(default_factory=dict)
    architecture: object = None
    pictures: object = None


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, to key dicts
class Task:
    name: str                # its script's module: results/<name>, reproduce.py --tasks <name>
    title: str               # the model as tables and figures name it (describe adds what its options change)
    epochs: int              # the 2020 report's
    batch_size: int          # the 2020 report's
    # (RunConfig, number of classes) -> the network its checkpoints hold, freshly initialised (after seeding)
    build_model: Callable
    description: str = ""    # --help's text
    options: type = NoOptions  # its own options: a frozen dataclass of common.config.option fields
    check: Callable = None   # (RunConfig) -> None, raises UserError: what spans several settings; on the
                             # command line, in plans and in predict.py
    saved_fields: dict = field(default_factory=dict)  # config.json field beyond the settings -> (check, what
                                                      # it must be), for predict.py
    prepare: Callable = None        # (run) -> Prepared; default: build_model on the run's classes
    input_network: Callable = None  # predict.py: (config.json, --weights) -> the network making the model's
                                    # inputs from images (task 1's frozen backbone), or None
    describe: Callable = None       # (RunConfig) -> the title with what its options change
    compiles: bool = False   # offers --compile (long enough training to repay compilation)
    cpu_bf16: bool = True    # --precision auto may pick bf16 on a CPU (False where bf16 slows the model)
    reproduce_with: dict = field(default_factory=dict)  # the options reproduce.py gives it (task 3: clusters=16)
    course_report: dict = None  # the 2020 report's table (report_table), where it has one
    course_options: dict = field(default_factory=dict)  # the report's run's options where they are not always
                                                        # ours (task 3: clusters=4, init="random")
    former_names: tuple = ()    # the "task" its earlier runs' config.json may hold
    in_reproduction: bool = True  # reproduce.py runs it by default (else only when --tasks names it)

    def config(self, **settings):
        """A RunConfig of this task: its defaults (its epochs and batch size, results/<name>, --compile
        auto where it compiles) changed by `settings`, the shared ones and its own options by name."""
        own = {f.name for f, _, _ in declared(self.options)}
        shared = {"epochs": self.epochs, "batch_size": self.batch_size, "out": RESULTS / self.name,
                  "compile": "auto" if self.compiles else "off",
                  **{name: value for name, value in settings.items() if name not in own}}
        return RunConfig(task=self.name, options=self.options(**{k: v for k, v in settings.items() if k in own}),
                         **shared)

    def checked(self, config):
        """config, every setting in range and the task's own check passed; else one UserError line."""
        config.check()
        if self.check:
            self.check(config)
        return config

    def course_setting(self, config):
        """None where `config` is the 2020 report's configuration (its options, no augmentation), else what
        the report's run did otherwise, as options: its numbers belong beside our row only where they match."""
        differ = {k: v for k, v in self.course_options.items() if getattr(config.options, k) != v}
        differ.update({k: v for k, v in (("epochs", self.epochs), ("batch_size", self.batch_size))
                       if getattr(config, k) != v})  # a quick look (--epochs 2) is no reproduction of the report
        if config.augment:
            differ["augment"] = False
        words = [f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}") for k, v in differ.items()]
        return " ".join(w if differ[k] is not False else f"without {w}" for k, w in zip(differ, words)) or None

    def title_for(self, config):
        """The title every output of a run carries."""
        title = self.describe(config) if self.describe else self.title
        return title + ", augmented" if config.augment else title
