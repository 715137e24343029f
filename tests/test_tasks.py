"""tasks.py and common/task.py: every task script is found by its name and declares its task once."""
import pytest

import tasks
from common.cli import UserError
from common.options import task_parser
from common.paths import REPO


def test_every_task_script_is_found_and_declares_the_task_it_is_named_for():
    names = tasks.task_names()
    assert names == sorted(p.stem for p in REPO.glob("task[0-9]*_*.py"))
    assert {"task1_efficientnet", "task2_shallow", "task3_netvlad"} <= set(names)
    assert [t.name for t in tasks.all_tasks()] == names


def test_an_unknown_task_is_one_error_and_a_former_name_finds_its_task():
    with pytest.raises(UserError, match="unknown task 'task9_nothing'"):
        tasks.load("task9_nothing")
    assert tasks.load("task1_efficientnet_lite0") is tasks.load("task1_efficientnet")  # config.json of older runs


def test_a_tasks_declaration_is_its_command_line():
    task3 = tasks.load("task3_netvlad")
    parser = task_parser(task3)
    assert parser.get_default("epochs") == task3.epochs == 100 and parser.get_default("batch_size") == 50
    assert parser.get_default("clusters") == 16 and parser.get_default("compile") == "auto"
    task1 = tasks.load("task1_vgg")
    assert task_parser(task1).get_default("out") == REPO / "results" / "task1_vgg"
    with pytest.raises(SystemExit):  # task 1 does not compile: no --compile
        task_parser(task1).parse_args(["--compile", "on"])


def test_the_title_says_what_the_options_change():
    from common.options import parse_run_config
    task3, task1 = tasks.load("task3_netvlad"), tasks.load("task1_efficientnet")
    assert task3.title_for(parse_run_config(task3, ["--clusters", "4", "--init", "random", "--augment"])) == \
        "Shallow ConvNet + NetVLAD (K=4, the report's random init), augmented"
    assert task1.title_for(parse_run_config(task1, ["--finetune"])) == "EfficientNet-Lite0, fine-tuned, linear head"
    with pytest.raises(UserError, match="--alpha must be a positive number"):
        parse_run_config(task3, ["--alpha", "-1"])


def test_a_script_that_cannot_be_imported_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "task9_broken.py").write_text("raise ValueError('half written')\n")
    monkeypatch.setattr(tasks, "REPO", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert tasks.task_names() == ["task9_broken"]
    with pytest.raises(UserError, match=r"^task9_broken.py cannot be loaded \(ValueError: half written\)$"):
        tasks.load("task9_broken")
