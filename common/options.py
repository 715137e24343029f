"""A task script's command line: the options every task shares and the task's own, parsed once into
a RunConfig; run_task trains the run it describes."""
import argparse
from pathlib import Path

from common.config import SEEDS, RunConfig
from common.paths import RESULTS
from common.runtime import COMPILE_MODES, PRECISIONS
from common.run import start_run, train_and_report
from common.task import Prepared


def add_training_args(parser, task, epochs, batch_size):
    """The options every task shares, with the report's settings as defaults."""
    parser.add_argument("--data", type=Path, default=None,
                        help="split folder holding train/, validation/ and test/, each with one folder per class "
                             "(default: the demo split data/demo_split, made from demo_data/images when missing)")
    parser.add_argument("--out", type=Path, default=RESULTS / task,
                        help=f"folder for tables, plots, config and checkpoints (default: results/{task})")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default: {epochs})")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"batch size (default: {batch_size})")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    parser.add_argument("--gamma", type=float, default=0.9,
                        help="StepLR factor applied to the learning rate after every epoch (default: 0.9)")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"seed for initialisation, batch order and dropout, 0 to {SEEDS - 1} (default: 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto = bf16 autocast on CPUs with AMX (not for task 3, which it slows) and "
                             "bf16-capable GPUs, fp32 elsewhere; "
                             "fp32 turns mixed precision off (default: auto)")
    parser.add_argument("--augment", action="store_true",
                        help="train on randomly resized crops (35-100 %% of the area) and horizontal flips of the "
                             "training images; evaluation stays resize 256 / centre crop 224 (default: off)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint (refused if any setting differs)")
    parser.add_argument("--force", action="store_true", help="replace the results of an earlier run in --out")


def add_compile_arg(parser):
    """--compile, for the tasks whose training is long enough to repay compilation."""
    parser.add_argument("--compile", choices=COMPILE_MODES, default="auto",
                        help="torch.compile the model: auto = where it can run (a C++ compiler on the CPU, "
                             "or CUDA), else eager with a warning; it costs some seconds once and rounds "
                             "differently from eager (default: auto)")


def task_parser(task):
    parser = argparse.ArgumentParser(description=task.description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(parser, task.name, task.epochs, task.batch_size)
    if task.compiles:
        add_compile_arg(parser)
    if task.add_options:
        task.add_options(parser)
    return parser


def as_argv(**options):
    """Options as a task script's command-line words, each value joined to its name: `--out=-o` stays
    one option with its value where `--out -o` reads as two options. True is a bare flag; None and
    False are left out."""
    words = []
    for name, value in options.items():
        option = "--" + name.replace("_", "-")
        if value is True:
            words.append(option)
        elif value is not None and value is not False:
            words.append(f"{option}={value}")
    return words


def parse_run_config(task, argv=None):
    """The task's command line as a checked RunConfig: every option in range before anything is read."""
    config = RunConfig.from_arguments(task.name, vars(task_parser(task).parse_args(argv)))
    config.check()
    if task.check_options:
        task.check_options(config)
    return config


def run_task(task, argv=None):
    """A task script's whole job: parse, prepare the model (and its inputs), train, write the results."""
    config = parse_run_config(task, argv)
    run = start_run(config, cpu_bf16=task.cpu_bf16)
    prepared = task.prepare(run) if task.prepare else Prepared(task.build_model(config, len(run.data.classes)), run)
    return train_and_report(prepared.model, prepared.run, task.title_for(config), prepared.extra_config)
