"""tasks.py and common/task.py: every task script is found by its name and declares its task once."""
import re
import shutil
import sys

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
    (tmp_path / "task9_broken.py").write_text("raise ValueError('half written')\nTASK = None\n")
    monkeypatch.setattr(tasks, "REPO", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert tasks.task_names() == ["task9_broken"]
    with pytest.raises(UserError, match=r"^task9_broken.py cannot be loaded \(ValueError: half written\)$"):
        tasks.load("task9_broken")


STRAYS = {  # what users keep beside the task scripts: file name -> its text (None: a folder) and why it is skipped
    "task2_shallow_old.py": ((REPO / "task2_shallow.py").read_text(), "declares the TASK of 'task2_shallow', not its own"),
    "task5_notes.py": ("# try a wider net\nraise SystemExit('ran')\n", "declares no TASK named 'task5_notes'"),  # not run
    "task5_scratch.py": ("import sys\nsys.exit(0)\nTASK = None\n", r"cannot be loaded \(SystemExit: 0\)"),
    "task6_dir.py": (None, "is not a file"),
    "task7_typo.py": ("def (\nTASK = None\n", r"cannot be loaded \(SyntaxError: "),
    "task8_imports.py": ("import no_such_module_here\nTASK = None\n", r"cannot be loaded \(ModuleNotFoundError: "),
}


def stray_repo(repo, monkeypatch):
    """A repository folder holding only STRAYS, as tasks.py's REPO; the modules they leave are removed after."""
    repo.mkdir()
    for name, (text, _) in STRAYS.items():
        (repo / name).mkdir() if text is None else (repo / name).write_text(text)
        monkeypatch.delitem(sys.modules, name[:-3], raising=False)  # undone after the test: gone again
    monkeypatch.setattr(tasks, "REPO", repo)
    monkeypatch.syspath_prepend(str(repo))
    return repo


def test_stray_files_are_skipped_with_one_warning_each_and_never_exit(tmp_path, monkeypatch, capsys):
    repo = stray_repo(tmp_path / "repo", monkeypatch)
    (repo / "task9_copy.py").write_text("import dataclasses\nfrom task2_shallow import TASK as SHALLOW\n"
                                        "TASK = dataclasses.replace(SHALLOW, name='task9_copy')\n")
    monkeypatch.delitem(sys.modules, "task9_copy", raising=False)
    assert [task.name for task in tasks.all_tasks()] == ["task9_copy"]  # no SystemExit from task5_scratch
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == len(STRAYS)
    for line, (name, (_, why)) in zip(warnings, sorted(STRAYS.items())):
        assert re.match(rf"warning: {name} {why}.*; skipped$", line), line
    tasks.all_tasks()
    assert capsys.readouterr().err == ""  # once per file, however often the tasks are listed
    with pytest.raises(UserError, match=r"^task5_scratch.py cannot be loaded \(SystemExit: 0\)$"):
        tasks.load("task5_scratch")


def test_loading_one_task_imports_no_other_script(tmp_path, monkeypatch):
    repo = stray_repo(tmp_path / "repo", monkeypatch)
    (repo / "task4_marks.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w')\n")
    monkeypatch.delitem(sys.modules, "task4_marks", raising=False)
    shutil.copy(REPO / "task2_shallow.py", repo)
    assert tasks.load("task2_shallow").name == "task2_shallow"
    assert not (tmp_path / "imported").exists()
    with pytest.raises(tasks.UnknownTask, match=r"unknown task 'x\\ntouch y': no 'x\\ntouch y.py' here"):
        tasks.load("x\ntouch y")  # a former name is looked for among the strays too: skipped, no exit


def test_the_2020_reports_numbers_belong_only_beside_its_own_configuration():
    netvlad, lite0 = tasks.load("task3_netvlad"), tasks.load("task1_efficientnet")
    assert netvlad.course_setting(netvlad.config(clusters=4, init="random")) is None
    assert netvlad.course_setting(netvlad.config(clusters=16)) == "--clusters 4 --init random"
    assert netvlad.course_setting(netvlad.config(clusters=4, init="random", augment=True)) == "without --augment"
    assert netvlad.course_setting(netvlad.config(clusters=4, init="random", batch_size=10)) == "--batch-size 50"
    assert lite0.course_setting(lite0.config()) is None
    assert lite0.course_setting(lite0.config(finetune=True)) == "without --finetune"
    assert lite0.course_setting(lite0.config(epochs=2)) == "--epochs 20"  # a quick look reproduces nothing
