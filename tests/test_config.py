"""common/config.py: a RunConfig is built directly or from a command line's or config.json's
arguments, reads back the same, and refuses settings out of range in the options' own words."""
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.cli import UserError
from common.config import RunConfig, option
from common.options import command_line, parse_run_config
from common.run import train_and_report, start_run
from common.saved_run import saved_settings
from common.task import Task
from conftest import make_split, start_test_run
from test_train import tiny_model


@dataclass(frozen=True)
class Clusters:
    clusters: int = option(16, "K")
    alpha: float | None = option(None, "sharpness")


def test_arguments_round_trip_with_the_tasks_own_options():
    task = Task("t", "t", 3, 5, build_model=None, options=Clusters)
    config = task.config(out=Path("-o"), lr=0.05, clusters=4)
    arguments = config.arguments()
    assert arguments["batch_size"] == 5 and arguments["clusters"] == 4 and "task" not in arguments
    assert parse_run_config(task, command_line(task, config)) == config  # as a child process reads it
    saved = {k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()}  # as config.json holds them
    assert task.config(**saved_settings(saved, RunConfig, Path("config.json")),
                       **saved_settings(saved, Clusters, Path("config.json"))) == config  # as predict.py reads it


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, "--epochs 0 is out of range"), ({"batch_size": 0}, "--batch-size 0 is out of range"),
    ({"lr": float("nan")}, "--lr nan is out of range"), ({"gamma": 0}, "--gamma 0 is out of range"),
    ({"seed": -1}, "--seed -1 is out of range"), ({"resume": True, "force": True}, "contradict each other")])
def test_check_names_the_option_out_of_range(change, message):
    config = RunConfig(task="t", out=Path("o"), epochs=3, batch_size=5).replace(**change)
    with pytest.raises(UserError, match=message):
        config.check()


def test_a_run_built_directly_trains_as_from_its_command_line(tmp_path):
    data = make_split(tmp_path / "data")
    config = RunConfig(task="test", data=data, out=tmp_path / "a", epochs=2, batch_size=5, lr=0.05, precision="fp32")
    run = start_run(config)  # seeds: the model is made after
    direct = train_and_report(tiny_model(), run, "tiny")
    parsed = start_test_run(["--data", str(data), "--out", str(tmp_path / "b"), "--epochs", "2", "--lr", "0.05",
                             "--precision", "fp32"])
    assert train_and_report(tiny_model(), parsed, "tiny") == direct
