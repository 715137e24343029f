"""A task script's command line, generated from the declarations (common.config.option): the
settings every task shares and the task's own, parsed once into a RunConfig; and back, a RunConfig
as the command line that a child process's script parses (command_line)."""
import argparse

from common.config import RunConfig, declared
from common.run import train


def add_option(parser, f, kind, default):
    """--name for the field `f` of type `kind` (an `X | None` field's X), as it is declared."""
    flag, meta = "--" + f.name.replace("_", "-"), f.metadata
    if kind is bool:
        parser.add_argument(flag, action="store_true", help=meta["help"])
    else:
        parser.add_argument(flag, type=kind, default=default, choices=meta["choices"], metavar=meta["metavar"],
                            help=meta["help"])


def task_parser(task):
    parser = argparse.ArgumentParser(description=task.description, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = task.config()
    for f, kind, _ in declared(RunConfig):
        if f.name != "compile" or task.compiles:
            add_option(parser, f, kind, getattr(defaults, f.name))
    for f, kind, _ in declared(task.options):
        add_option(parser, f, kind, getattr(defaults.options, f.name))
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


def command_line(task, config):
    """The words after the task script's name that its command line parses back into `config`: the
    one way a RunConfig crosses to another process."""
    arguments = config.arguments()
    if not task.compiles:  # no --compile: always off
        del arguments["compile"]
    return as_argv(**arguments)


def parse_run_config(task, argv=None):
    """The task's command line as a checked RunConfig: every option in range before anything is read."""
    return task.checked(task.config(**vars(task_parser(task).parse_args(argv))))


def run_task(task, argv=None):
    """A task script's whole job: its command line parsed, then trained (common.run.train)."""
    return train(task, parse_run_config(task, argv))
