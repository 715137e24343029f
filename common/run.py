"""A run from start to finish: its checks, data and device, then training with its run folder kept:
config.json, checkpoints, history, the report's table and figures. Under torchrun rank 0 alone
prints and writes."""
import contextlib
import platform

import numpy as np
import torch
import torchvision

from common import checkpoint, distributed, results
from common.architecture import architecture_markdown
from common.errors import UserError, warn
from common.files import atomic_write
from common.data import load_splits
from common.demo import default_data
from common.paths import DEMO_IMAGES
from common.run_folder import check_out, clear_previous, open_run_folder
from common.runtime import CompiledOrEager, pick_compile, pick_device, pick_precision
from common.task import Prepared
from common.tensorboard_log import EventLog
from common.train import Run, evaluate, fit, seed_everything


def start_run(config, cpu_bf16=True):
    """Everything before the model: checks, seeds, device, precision, data. The run folder is created
    only when training starts (train_and_report), so a refused run leaves nothing behind.
    cpu_bf16=False: --precision auto stays fp32 on CPUs (see pick_precision)."""
    config.check()
    device = distributed.setup(pick_device(config.device))
    precision = pick_precision(config.precision, device, cpu_bf16)
    compiled = pick_compile(config.compile, device)
    if config.data is not None and not config.data.is_dir():
        raise UserError(f"--data {config.data}: no such folder")
    with distributed.main_first():  # under torchrun, rank 0 makes the demo split and decodes; the others read
        root = config.data if config.data is not None else default_data()
        if distributed.is_main():  # the others would find rank 0's run folder, made meanwhile
            check_out(config, root, *([] if config.data is not None else [DEMO_IMAGES]))
        data = load_splits(root)
    seed_everything(config.seed)
    return Run(config, data, device, precision, compiled)


def count_parameters(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def config_of(run, model, title, extra):
    """What config.json records; a collective under torchrun (every rank's device), so every rank calls it."""
    trainable, total = count_parameters(model)
    rank_devices = distributed.from_every_rank(str(run.device))
    return {
        "task": run.config.task, "title": title, "arguments": run.config.arguments(), "seed": run.config.seed,
        "device": str(run.device), "precision": run.precision, "compiled": run.compiled,
        "threads": torch.get_num_threads(),  # sums split over threads: another count changes the rounding
        "processes": distributed.world(),  # torchrun's ranks draw other dropout masks than one process
        **({"rank_devices": rank_devices} if len(set(rank_devices)) > 1 else {}),
        "parameters": {"trainable": trainable, "total": total},
        "classes": run.data.classes, "data": str(run.data.root),
        "split_sizes": {name: len(split) for name, split in run.data.splits().items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        **extra,
    }


def record_eager(run, config, error):
    """torch.compile failed and the run went on in eager mode (CompiledOrEager says so from then on):
    config.json says so, and why."""
    config.update(compiled=False, compile_error=error)
    if distributed.is_main():
        results.write_config(run.out, config)


def begin(run, config, key):
    """Rank 0, holding the run folder's lock: the checkpoint to resume (its key checked before
    config.json is rewritten with this run's settings), the earlier run's files cleared, config.json written."""
    resumed = None
    if run.config.resume:
        resumed = checkpoint.load_checkpoint(run.out / "last.pt")
        checkpoint.check_resumable(resumed, run.config, key)
    clear_previous(run.out, run.config.force)
    results.write_config(run.out, config)
    return resumed


def keeper(run, key, events):
    """fit's save and epoch_done: rank 0 writes last.pt, best.pt, history.csv and the epoch's events;
    the others nothing."""
    main = distributed.is_main()

    def save(state, best):
        if main:
            checkpoint.save({**state, "key": key}, best, run.out)

    def epoch_done(history):
        if main:
            results.write_history(run.out, history)
            events.epoch(history[-1])
    return save, epoch_done


def write_results(run, metrics, history, test_log_probs, title, config):
    """The test predictions (their SHA-256 recorded in config.json, which REPORT.md checks them
    against), the report's table, its figure pair and the test confusion matrix (figure and CSV)."""
    config["test_predictions_sha256"] = results.write_predictions(
        run.out / "test_predictions.csv", run.data.test, test_log_probs, run.data.classes)
    results.write_config(run.out, config)
    results.write_metrics(run.out, metrics, title, results.trained_by(config))
    results.plot_history(run.out, [history], title)
    counts = results.confusion_matrix(run.data.test.labels, test_log_probs.argmax(dim=1), len(run.data.classes))
    results.write_confusion_csv(run.out / "confusion.csv", counts, run.data.classes)
    results.plot_confusion(run.out / "confusion.png", counts, run.data.classes, f"{title}: test confusion matrix",
                           whole_matrix=run.out / "confusion.csv")


def describe_model(run, title, model, architecture, pictures):
    """architecture.md (the layers of `architecture`, the whole model) and the task's own pictures.
    A model they cannot run one image through costs one warning, never the trained run."""
    try:
        atomic_write(run.out / "architecture.md", architecture_markdown(architecture, title))
        if pictures is not None:
            pictures(model, run, title)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:  # what a forward that fails raises
        warn(f"{run.out}: its layer table or pictures could not be made: {error}")


def train_and_report(model, run, title, extra_config=None, extra_key=None, architecture=None, pictures=None):
    """Train, evaluate every split in eval mode, and write the table, plots and config. extra_key:
    what the resume key adds to the settings (Prepared.key); architecture: the whole model, where
    `model` is a part of it (Prepared.architecture); pictures: the task's own figures (Prepared.pictures)."""
    config = config_of(run, model, title, extra_config or {})
    key = checkpoint.run_key(run, extra_key or {})
    main = distributed.is_main()
    if main:
        trainable, total = config["parameters"].values()
        print(f"{title}: {trainable:,} trainable of {total:,} parameters; {run.device}, {run.precision}; "
              f"{results.trained_by(config)}; "
              f"train/validation/test = {'/'.join(str(n) for n in config['split_sizes'].values())} images")
    with open_run_folder(run.out, run.config.resume, run.config.force) if main else contextlib.nullcontext():
        resumed = distributed.broadcast(begin(run, config, key) if main else None)
        model.to(run.device, memory_format=torch.channels_last)
        forward = distributed.wrap(model, run.device)
        if run.compiled:  # compiles at its first call
            forward = CompiledOrEager(forward, run.config.compile, lambda error: record_eager(run, config, error))
        events = EventLog(run.out, main and not run.config.no_tensorboard, resumed["history"] if resumed else ())
        with contextlib.closing(events):
            history = fit(model, forward, run, *keeper(run, key, events), resumed)
            metrics, log_probs = {}, None
            for name, split in run.data.splits().items():
                metrics[name], log_probs = evaluate(model, split, run, forward)  # test comes last
            if main:
                write_results(run, metrics, history, log_probs, title, config)
                events.finish(config, run.data.root, metrics, len(history), run.out / "confusion.png")
                describe_model(run, title, model, model if architecture is None else architecture, pictures)
    if main:
        print(f"\n{title} ({run.out}; {results.trained_by(config)})\n{results.format_table(metrics)}")
    distributed.finish()  # under torchrun: the last collective was the test split's
    return metrics


def train(task, config):
    """The one way a configuration runs, in this process or in a child's script: the task's model
    prepared (and its inputs), trained, the results written. Returns the metrics."""
    run = start_run(task.checked(config), cpu_bf16=task.cpu_bf16)
    prepared = task.prepare(run) if task.prepare else Prepared(task.build_model(config, len(run.data.classes)), run)
    return train_and_report(prepared.model, prepared.run, task.title_for(config), prepared.extra_config, prepared.key,
                            prepared.architecture, prepared.pictures)
