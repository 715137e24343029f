"""predict.py: the same numbers as the run's own test row, top-k, CSV, and bad input."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common.saved_run
import predict
import task1_efficientnet
import task2_shallow
import task3_netvlad
from common.cli import UserError
from conftest import REPO, flip_byte_in_largest_tensor, make_image, make_split
from test_tasks import stray_repo


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("predict") / "data", counts=(4, 2, 3))


def train(main, data, out, *argv):
    main(["--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "4", "--precision", "fp32",
          *argv])
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("task, argv", [(task2_shallow, ["--compile", "off"]),
                                        (task3_netvlad, ["--compile", "off", "--clusters", "2"]),
                                        (task3_netvlad, ["--compile", "off", "--clusters", "2", "--init", "random"]),
                                        (task1_efficientnet, ["--no-pretrained"])])
def test_a_labelled_test_folder_repeats_the_runs_own_test_row_exactly(task, argv, data, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = train(task.main, data, tmp_path / "run", *argv)
    scores = predict.main([str(tmp_path / "run"), str(data / "test"), "--checkpoint", "last",
                           "--pictures", str(tmp_path)])
    assert scores == {data / "test": metrics["test"]}
    out = capsys.readouterr().out
    assert f"top-1 {metrics['test']['top1']:.2f} %" in out
    assert (tmp_path / "test-confusion.png").exists()


@pytest.fixture(scope="module")
def shallow_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("shallow") / "run"
    train(task2_shallow.main, data, out, "--compile", "off")
    return out


def test_top_k_is_capped_and_the_csv_has_a_row_per_rank(shallow_run, data, tmp_path, capsys):
    image = data / "test" / "red" / "0.png"
    predict.main([str(shallow_run), str(image), "--top", "10", "--out", str(tmp_path / "p.csv")])
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{image}: ") and line.count(" %") == 3  # 3 classes, not 10
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and {r["class"] for r in rows} == {"blue", "green", "red"}
    assert sum(float(r["probability"]) for r in rows) == pytest.approx(1, abs=1e-5)


def test_best_is_the_default_checkpoint(shallow_run, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(shallow_run, run)
    (run / "last.pt").write_bytes(b"broken")
    assert set(predict.main([str(run), str(data / "test")])) == {data / "test"}  # best.pt, untouched
    with pytest.raises(UserError, match="last.pt is corrupt"):
        predict.main([str(run), str(data / "test"), "--checkpoint", "last"])


def test_corrupt_files_are_skipped_and_unknown_classes_named(shallow_run, data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "new"
    shutil.copytree(data / "test", folder)
    (folder / "red" / "broken.png").write_bytes(b"not an image")
    make_image(folder / "purple" / "0.png", (120, 0, 120), 1)
    scores = predict.main([str(shallow_run), str(folder), "--pictures", str(tmp_path)])
    captured = capsys.readouterr()
    assert "broken.png: cannot be read as an image" in captured.err
    assert "classes the model does not know, skipped: purple" in captured.err
    assert len(captured.out.splitlines()) >= 9 and "purple/0.png" not in captured.out
    assert set(scores) == {folder} and (tmp_path / "new-confusion.png").exists()


@pytest.mark.parametrize("setup, message", [
    (lambda run, tmp: (tmp / "empty").mkdir() or [str(tmp / "empty")], "holds no config.json"),
    (lambda run, tmp: [str(run), "--checkpoint", "best"] if (run / "best.pt").unlink() is None else [],
     "holds no best.pt"),
])
def test_a_folder_that_is_not_a_finished_run_is_one_error(shallow_run, data, tmp_path, setup, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(shallow_run, run)
    argv = setup(run, tmp_path)
    with pytest.raises(UserError, match=message):
        predict.main([*argv[:1], str(data / "test"), *argv[1:]])


def test_a_checkpoint_of_another_model_or_with_code_is_refused(shallow_run, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(shallow_run, run)
    torch.save({"model": {"conv.weight": torch.zeros(2)}, "loss": 1.0, "epoch": 1}, run / "best.pt")
    with pytest.raises(UserError, match="does not fit the run's task2_shallow model"):
        predict.main([str(run), str(data / "test")])
    from conftest import CreatesFile
    torch.save({"model": CreatesFile(tmp_path / "pwned")}, run / "best.pt")
    with pytest.raises(UserError, match="holds objects other than tensors and plain data.*not loaded: refused"):
        predict.main([str(run), str(data / "test")])
    assert not (tmp_path / "pwned").exists()


def test_weights_with_a_flipped_byte_are_refused(shallow_run, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shallow_run, run)
    flip_byte_in_largest_tensor(run / "best.pt")
    with pytest.raises(UserError, match=r"best\.pt is corrupt or unreadable \(.* fails its CRC-32 check\): refused"):
        predict.main([str(run), str(data / "test")])


@pytest.fixture(scope="module")
def efficientnet_run(data, tmp_path_factory):
    """A frozen task 1 run on the packaged ImageNet weights (config.json names their file)."""
    out = tmp_path_factory.mktemp("efficientnet") / "run"
    train(task1_efficientnet.main, data, out)
    return out


def test_task1_refuses_other_backbone_weights_and_names_the_option(efficientnet_run, data, tmp_path):
    package = json.loads((efficientnet_run / "config.json").read_text())["weights"]
    state = torch.load(package, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] * 1.01
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not the ones the run used.*--weights FILE"):
        predict.main([str(efficientnet_run), str(data / "test"), "--weights", str(tmp_path / "other.pth")])


def test_a_bad_weights_file_that_config_json_names_is_not_called_an_option(efficientnet_run, data, tmp_path):
    run = copy_with_config(efficientnet_run, tmp_path, lambda c: c.update(weights=str(tmp_path / "bad.pth")))
    (tmp_path / "bad.pth").write_text("not weights\n")
    with pytest.raises(UserError, match=r"^the weights file config.json names \(.*bad.pth\) is not a PyTorch") as error:
        predict.main([str(run), str(data / "test" / "red")])
    assert "--weights" not in str(error.value)


@pytest.mark.slow
def test_bad_input_from_the_command_line_is_one_line_and_exit_2(shallow_run, tmp_path):
    done = subprocess.run([sys.executable, "predict.py", str(shallow_run), str(tmp_path / "missing.jpg")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "no such file or folder" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_existing_out_file_or_picture_is_replaced_only_with_force(shallow_run, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine.csv"
    mine.write_text("precious")
    with pytest.raises(UserError, match="mine.csv exists; --force replaces it"):
        predict.main([str(shallow_run), str(data / "test"), "--out", str(mine)])
    picture = tmp_path / "test-confusion.png"
    picture.write_text("precious too")
    with pytest.raises(UserError, match="test-confusion.png exists; --force replaces it"):
        predict.main([str(shallow_run), str(data / "test"), "--pictures", str(tmp_path)])
    assert mine.read_text() == "precious" and picture.read_text() == "precious too"
    predict.main([str(shallow_run), str(data / "test"), "--out", str(mine), "--pictures", str(tmp_path), "--force"])
    assert mine.read_text().startswith("path,rank,class,probability") and picture.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "link.csv").symlink_to(mine)
    for out, message in ((tmp_path / "link.csv", "not a regular file"), (f"{tmp_path}/new/", "is a folder")):
        with pytest.raises(UserError, match=message):
            predict.main([str(shallow_run), str(data / "test" / "red"), "--out", str(out), "--force"])
    assert (tmp_path / "link.csv").is_symlink() and not (tmp_path / "new").exists()


def test_no_picture_is_written_into_a_folder_being_predicted(shallow_run, data, tmp_path, monkeypatch):
    folder = tmp_path / "labelled"
    shutil.copytree(data / "test", folder)
    monkeypatch.chdir(folder / "red")  # the picture would become a training image of class red
    for where in (["--pictures", "."], ["--out", "p.csv"], ["--pictures", str(folder / "new")]):
        with pytest.raises(UserError, match="would lie inside .*labelled"):
            predict.main([str(shallow_run), str(folder), *where])
    assert not list(folder.rglob("*confusion*")) and not (folder / "red" / "p.csv").exists()
    assert not (folder / "new").exists()


def test_two_labelled_folders_of_one_name_get_a_picture_each(shallow_run, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for parent in ("a", "b"):
        shutil.copytree(data / "test", tmp_path / parent / "test")
    scores = predict.main([str(shallow_run), str(tmp_path / "a" / "test"), str(tmp_path / "b" / "test"),
                           "--pictures", str(tmp_path)])
    assert len(scores) == 2
    assert (tmp_path / "test-confusion.png").exists() and (tmp_path / "test-2-confusion.png").exists()


def test_images_beside_the_class_folders_are_predicted_not_scored(shallow_run, data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "mixed"
    shutil.copytree(data / "test", folder)
    make_image(folder / "loose.png", (0, 0, 200), 2)
    scores = predict.main([str(shallow_run), str(folder)])
    captured = capsys.readouterr()
    assert "1 images outside its class folders are predicted, not scored" in captured.err
    assert f"{folder / 'loose.png'}: " in captured.out
    assert "(9 images)" in captured.out and set(scores) == {folder}  # scored: the 9 in class folders


def copy_with_config(run, tmp_path, doctor):
    """A copy of `run` whose config.json `doctor` edited."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    doctor(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def edited_config(field):
    return rf"config.json was not written by this project \(or was edited\): {field} is "


def older_config(field):
    return rf"config.json was written by an older version of this project \(it has no '{field}' field\), or edited"


@pytest.mark.parametrize("doctor, field", [
    (lambda c: c.update(task=None), "task"), (lambda c: c.update(task="task1 mobilenet"), "task"),
    (lambda c: c.update(precision="fp16"), "precision"),
    (lambda c: c["arguments"].update(batch_size=0), "arguments.batch_size"),
    (lambda c: c["arguments"].update(batch_size="50"), "arguments.batch_size"),
    (lambda c: c.update(classes=["only"]), "classes"), (lambda c: c.update(classes=["red", "red", "blue"]), "classes"),
    (lambda c: c.update(classes=[1, 2, 3]), "classes"), (lambda c: c.update(compiled="no"), "compiled"),
])
def test_a_hand_edited_config_is_one_error(shallow_run, data, tmp_path, doctor, field):
    run = copy_with_config(shallow_run, tmp_path, doctor)
    with pytest.raises(UserError, match=edited_config(field)):
        predict.main([str(run), str(data / "test" / "red")])


@pytest.fixture(scope="module")
def netvlad_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("netvlad") / "run"
    train(task3_netvlad.main, data, out, "--compile", "off", "--clusters", "2")
    return out


@pytest.mark.parametrize("doctor, argv, message", [
    (lambda c: c["arguments"].update(clusters=2 ** 40), [], "NetVLAD with K=1099511627776 needs about .* batch of 4"),
    (lambda c: c["arguments"].update(clusters=2 ** 40), ["--batch-size", "1"], "K=1099511627776 .* batch of 1 "),
    (lambda c: c["arguments"].update(clusters="4"), [], edited_config("arguments.clusters")),
    (lambda c: c["arguments"].update(clusters=True), [], edited_config("arguments.clusters")),
    (lambda c: c["arguments"].update(init="other"), [], edited_config("arguments.init")),
])
def test_a_netvlad_config_is_checked_like_its_command_line(netvlad_run, data, tmp_path, doctor, argv, message):
    run = copy_with_config(netvlad_run, tmp_path, doctor)  # K = 2**40 tried to allocate 64 TB
    with pytest.raises(UserError, match=message):
        predict.main([str(run), str(data / "test" / "red"), *argv])


@pytest.mark.parametrize("doctor, field", [
    (lambda c: c.update(backbone=["efficientnet_lite0"]), "backbone"), (lambda c: c.update(backbone="vgg"), "backbone"),
    (lambda c: c.update(backbone="resnet50"), "backbone"),
    (lambda c: c.update(weights=3), "weights"), (lambda c: c.update(weights=["a.pth"]), "weights"),
    (lambda c: c.update(pretrained="yes"), "pretrained"), (lambda c: c.update(finetuned=1), "finetuned"),
    (lambda c: c["arguments"].update(seed=-1), "arguments.seed"),
    (lambda c: c["arguments"].update(seed=2 ** 32), "arguments.seed"),
])
def test_a_task1_config_names_the_edited_field_not_the_task(efficientnet_run, data, tmp_path, doctor, field):
    run = copy_with_config(efficientnet_run, tmp_path, doctor)
    with pytest.raises(UserError, match=edited_config(field)) as error:
        predict.main([str(run), str(data / "test" / "red")])
    assert "not a task" not in str(error.value)


@pytest.mark.parametrize("field", ["classes", "precision", "arguments.batch_size"])
def test_a_config_without_a_field_this_version_reads_is_called_older(shallow_run, data, tmp_path, field):
    def without(config):
        *parents, name = field.split(".")
        for key in parents:
            config = config[key]
        config.pop(name)
    run = copy_with_config(shallow_run, tmp_path, without)
    with pytest.raises(UserError, match=older_config(field)):
        predict.main([str(run), str(data / "test" / "red")])


def test_a_task1_run_from_before_finetuning_is_read_as_frozen(efficientnet_run, data, tmp_path):
    def older(config):
        for fields in (config, config["arguments"]):  # what task 1 wrote before --finetune
            for name in ("finetuned", "finetune", "backbone_lr_factor"):
                fields.pop(name, None)
    run = copy_with_config(efficientnet_run, tmp_path, older)
    assert set(predict.main([str(run), str(data / "test")])) == {data / "test"}
    run = copy_with_config(efficientnet_run, tmp_path / "sha", lambda c: c.pop("weights_sha1"))
    with pytest.raises(UserError, match=older_config("weights_sha1")):
        predict.main([str(run), str(data / "test")])


def test_a_run_whose_script_is_gone_says_so(shallow_run, data, tmp_path):
    run = copy_with_config(shallow_run, tmp_path, lambda c: c.update(task="task4_example"))
    with pytest.raises(UserError, match="config.json is a run of task4_example, whose script task4_example.py is no "
                                        "longer here: put it back"):
        predict.main([str(run), str(data / "test" / "red")])


def test_stray_task_files_do_not_stop_predicting_with_another_tasks_run(shallow_run, data, tmp_path, monkeypatch,
                                                                       capsys):
    repo = stray_repo(tmp_path / "repo", monkeypatch)
    shutil.copy(REPO / "task2_shallow.py", repo)  # the run's own script, beside the strays
    assert set(predict.main([str(shallow_run), str(data / "test")])) == {data / "test"}
    assert "warning" not in capsys.readouterr().err  # no other script was even imported


def test_a_name_with_a_newline_stays_on_its_error_line(tmp_path):
    with pytest.raises(UserError) as error:
        predict.main([str(tmp_path / "x\ntouch y"), str(tmp_path / "photo.jpg")])
    assert "\n" not in str(error.value) and repr(str(tmp_path / "x\ntouch y")) in str(error.value)


@pytest.mark.slow
def test_a_config_nested_too_deeply_is_one_error(shallow_run, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shallow_run, run)
    (run / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json
    done = subprocess.run([sys.executable, "predict.py", str(run), str(data / "test" / "red")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "config.json is unreadable" in done.stderr and "Traceback" not in done.stderr


def test_unwritable_outputs_are_refused_before_any_prediction(shallow_run, data, tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access  # as root every folder is writable: make one not, as for a user
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and access(path, mode))
    for where, message in ((["--out", str(tmp_path / "missing" / "p.csv")], "there is no folder .*missing"),
                           (["--out", str(tmp_path / "a_file" / "p.csv")], "a_file is a file, not a folder"),
                           (["--out", str(locked / "p.csv")], "cannot write to --out's folder .*locked"),
                           (["--pictures", str(tmp_path / "a_file")], "--pictures .*a_file is a file"),
                           (["--pictures", str(locked / "new")], "cannot write to --pictures .*locked")):
        with pytest.raises(UserError, match=message):
            predict.main([str(shallow_run), str(data / "test"), *where])
        assert capsys.readouterr().out == ""  # refused before the first prediction
    assert not (tmp_path / "missing").exists() and not any(locked.iterdir())


def test_the_picture_goes_beside_out_or_into_pictures_never_into_the_current_folder(shallow_run, data, tmp_path,
                                                                                    capsys, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # e.g. the repository's root
    predict.main([str(shallow_run), str(data / "test")])
    hint = [line for line in capsys.readouterr().out.splitlines() if "picture" in line]
    assert hint == ["no confusion-matrix picture written: --pictures DIR (or --out FILE) writes one per "
                    "labelled folder"]
    (tmp_path / "out").mkdir()
    predict.main([str(shallow_run), str(data / "test"), "--out", str(tmp_path / "out" / "p.csv")])
    predict.main([str(shallow_run), str(data / "test"), "--out", str(tmp_path / "p.csv"),
                  "--pictures", str(tmp_path / "new" / "pictures")])
    assert not any(here.iterdir())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p-test-confusion.png", "p.csv"]
    assert [p.name for p in (tmp_path / "new" / "pictures").iterdir()] == ["test-confusion.png"]
    assert "wrote " + str(tmp_path / "new" / "pictures" / "test-confusion.png") in capsys.readouterr().out


@pytest.mark.slow
def test_a_fifo_config_a_huge_batch_and_an_odd_file_name_are_handled(shallow_run, data, tmp_path):
    fifo_run = tmp_path / "fifo_run"
    fifo_run.mkdir()
    os.mkfifo(fifo_run / "config.json")
    odd = tmp_path / "odd"
    odd.mkdir()
    odd_name = os.fsencode(odd) + b"/bad\xff.png"
    with open(odd_name, "wb") as f:
        f.write((data / "test" / "red" / "0.png").read_bytes())
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}  # a UTF-8 terminal, which cannot show \xff
    for argv, rc, expected in (([str(fifo_run), str(odd)], 2, "config.json is unreadable"),
                               ([str(shallow_run), str(odd), "--batch-size", str(10 ** 20)], 2, "is out of range"),
                               ([str(shallow_run), str(odd), "--out", str(tmp_path / "p.csv")], 0, "")):
        done = subprocess.run([sys.executable, "predict.py", *argv], cwd=REPO, capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == rc and expected in done.stderr and "Traceback" not in done.stderr
    assert b"bad\xff.png" in (tmp_path / "p.csv").read_bytes()  # the file's own name, byte for byte


def test_hidden_folders_and_files_are_neither_classes_nor_images(shallow_run, data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    labelled, loose = tmp_path / "labelled", tmp_path / "loose"
    shutil.copytree(data / "test", labelled)
    shutil.copytree(data / "test" / "red", loose)
    for folder in (labelled, loose, labelled / "red"):  # Jupyter leaves one in every folder it opens
        make_image(folder / ".ipynb_checkpoints" / "0-checkpoint.png", (0, 0, 0), 1)
    make_image(loose / "._0.png", (0, 0, 0), 2)
    scores = predict.main([str(shallow_run), str(labelled), str(loose)])
    captured = capsys.readouterr()
    assert "does not know" not in captured.err and "(9 images)" in captured.out and set(scores) == {labelled}
    assert ".ipynb_checkpoints" not in captured.out and "._0.png" not in captured.out


def test_a_gif_is_predicted_in_a_folder_too_and_a_named_non_image_is_left_out(shallow_run, data, tmp_path, capsys):
    from PIL import Image
    (tmp_path / "gifs").mkdir()
    Image.open(data / "test" / "red" / "0.png").convert("P").save(tmp_path / "gifs" / "red.gif")
    (tmp_path / "notes.txt").write_text("not an image")
    predict.main([str(shallow_run), str(tmp_path / "gifs"), str(tmp_path / "notes.txt")])
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{tmp_path / 'gifs' / 'red.gif'}: ")
    assert f"{tmp_path / 'notes.txt'}: not an image file name (.jpg" in captured.err
    assert "notes.txt" not in captured.out


def test_a_class_folder_linking_to_another_class_is_refused(shallow_run, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "labelled"
    shutil.copytree(data / "test", folder)
    shutil.rmtree(folder / "blue")
    (folder / "blue").symlink_to("red")  # red's images scored a second time, as blue
    with pytest.raises(UserError, match="class folder .*blue links to images of the class folder red too"):
        predict.main([str(shallow_run), str(folder)])


def test_a_cache_inside_a_folder_being_predicted_is_refused(shallow_run, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "photos"
    shutil.copytree(data / "test" / "red", folder)
    monkeypatch.setattr("common.cache.CACHE_DIR", folder / "cache")
    with pytest.raises(UserError, match=f"the cache folder {folder / 'cache'} is inside {folder}"):
        predict.main([str(shallow_run), str(folder)])
    assert not (folder / "cache").exists()


def test_a_compiled_run_whose_compilation_fails_here_predicts_in_eager_mode(shallow_run, data, tmp_path, monkeypatch,
                                                                          capsys):
    from test_runtime import failing_compile
    run = tmp_path / "run"
    shutil.copytree(shallow_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "compiled": True}))
    monkeypatch.setattr(common.saved_run, "pick_compile", lambda mode, device: True)  # a compiler runs here
    monkeypatch.setattr(torch, "compile", failing_compile)  # ... and fails on this model
    scores = predict.main([str(run), str(data / "test")])
    assert scores[data / "test"] == predict.main([str(shallow_run), str(data / "test")])[data / "test"]
    assert capsys.readouterr().err.count("warning: torch.compile failed (RuntimeError: C++ compile error)") == 1


# --- a cross-validated repetition: the ensemble of its fold runs --------------------------------

def linked_copy(run, to, doctor=lambda config: None):
    """`run`'s files hard-linked into `to` (its checkpoints are not copied), config.json edited by `doctor`."""
    shutil.copytree(run, to, copy_function=os.link)
    config = json.loads((to / "config.json").read_text())
    doctor(config)
    (to / "config.json").unlink()  # a hard link: writing into it would edit `run`'s too
    (to / "config.json").write_text(json.dumps(config))
    return to


@pytest.fixture(scope="module")
def repetition(data, tmp_path_factory):
    """A repetition's folder of two fold runs, barely trained (a tiny learning rate): their probabilities
    are far from 0 and 1, and differ, so that their mean shows in the CSV's 6 decimals."""
    rep = tmp_path_factory.mktemp("cv") / "rep0"
    for fold in (0, 1):
        train(task2_shallow.main, data, rep / f"fold{fold}", "--compile", "off", "--seed", str(fold), "--lr", "1e-7")
    return rep


def probabilities(rows):
    return {(r["path"], r["class"]): float(r["probability"]) for r in rows}


def test_the_ensemble_predicts_the_mean_of_the_fold_models_probabilities(repetition, data, tmp_path, capsys):
    def predicted(run_dir, *argv):
        out = tmp_path / f"{run_dir.name}.csv"
        scores = predict.main([str(run_dir), str(data / "test"), "--out", str(out), *argv])
        with open(out, newline="") as f:
            return scores, list(csv.DictReader(f))
    folds = [probabilities(predicted(repetition / f"fold{k}")[1]) for k in (0, 1)]
    scores, rows = predicted(repetition, "--pictures", str(tmp_path))
    ensemble = probabilities(rows)
    assert ensemble.keys() == folds[0].keys() and len(ensemble) == 9 * 3
    assert all(p == pytest.approx((folds[0][key] + folds[1][key]) / 2, abs=2e-6) for key, p in ensemble.items())
    assert ensemble != folds[0] and ensemble != folds[1]
    # its row is scored on the averaged probabilities: the logloss of the true classes, top-1 of the first ranks
    true = [p for (path, name), p in ensemble.items() if Path(path).parent.name == name]
    top1 = [r["class"] == Path(r["path"]).parent.name for r in rows if r["rank"] == "1"]
    assert scores[data / "test"]["loss"] == pytest.approx(-sum(map(math.log, true)) / 9, rel=1e-4)
    assert scores[data / "test"]["top1"] == pytest.approx(100 * sum(top1) / 9)
    assert "ensemble of 2 fold runs on" in capsys.readouterr().out and (tmp_path / "test-confusion.png").exists()


def test_one_fold_run_alone_predicts_as_its_run_did(repetition, data):
    metrics = json.loads((repetition / "fold1" / "metrics.json").read_text())
    scores = predict.main([str(repetition / "fold1"), str(data / "test"), "--checkpoint", "last"])
    assert scores == {data / "test": metrics["test"]}


@pytest.mark.parametrize("folds, message", [
    ({"fold0": "shallow", "fold1": "other classes"}, r"fold1 has other classes than .*fold0 \(or in another order\)"),
    ({"fold0": "shallow", "fold1": "netvlad"}, r"fold1 is a run of task3_netvlad, .*fold0 of task2_shallow"),
    ({"fold0": "shallow", "fold2": "shallow"}, r"rep0 has no fold run fold1: "),
    ({"fold0": "shallow"}, r"rep0 has no fold run fold1: "),  # cross-validation has 2 folds or more
    ({"fold0": "shallow", "fold1": "unfinished"}, r"fold1 is not a finished run \(no metrics.json\)"),
])
def test_fold_runs_that_make_no_ensemble_are_refused(folds, message, shallow_run, netvlad_run, data, tmp_path):
    make = {"shallow": lambda fold: fold.symlink_to(shallow_run), "netvlad": lambda fold: fold.symlink_to(netvlad_run),
            "other classes": lambda fold: linked_copy(shallow_run, fold, lambda c: c["classes"].reverse()),
            "unfinished": lambda fold: (linked_copy(shallow_run, fold) / "metrics.json").unlink()}
    (tmp_path / "rep0").mkdir()
    for fold, kind in folds.items():
        make[kind](tmp_path / "rep0" / fold)
    with pytest.raises(UserError, match=message):
        predict.main([str(tmp_path / "rep0"), str(data / "test")])


def test_explain_draws_a_grad_cam_picture_per_image_each_named_apart(shallow_run, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(predict, "EXPLAINED_AT_ONCE", 4)  # 9 images in 3 chunks
    predict.main([str(shallow_run), str(data / "test"), "--explain", "--pictures", str(tmp_path / "pictures")])
    pictures = sorted((tmp_path / "pictures").glob("*-gradcam.png"))
    assert len(pictures) == len(list(data.glob("test/*/*.png"))) == 9  # 0.png in each class folder: 0-2-..., 0-3-...
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pictures)
    assert "wrote 9 Grad-CAM pictures" in capsys.readouterr().out


def test_explain_puts_its_pictures_beside_out_and_needs_a_place(shallow_run, data, tmp_path):
    image = data / "test" / "red" / "1.png"
    with pytest.raises(UserError, match="--explain writes a picture per image: give --pictures DIR, or --out FILE"):
        predict.main([str(shallow_run), str(image), "--explain"])
    predict.main([str(shallow_run), str(image), "--explain", "--out", str(tmp_path / "p.csv")])  # one image: a batch of 1
    assert (tmp_path / "p-1-gradcam.png").is_file()
    (tmp_path / "q-1-gradcam.png").write_text("precious")
    with pytest.raises(UserError, match="q-1-gradcam.png exists; --force replaces it"):
        predict.main([str(shallow_run), str(image), "--explain", "--out", str(tmp_path / "q.csv")])
    assert (tmp_path / "q-1-gradcam.png").read_text() == "precious" and not (tmp_path / "q.csv").exists()
    predict.main([str(shallow_run), str(image), "--explain", "--out", str(tmp_path / "q.csv"), "--force"])
    assert (tmp_path / "q-1-gradcam.png").read_bytes()[:4] == b"\x89PNG"


def test_a_frozen_task1_run_is_explained_on_its_backbone_and_an_ensemble_by_its_mean_map(efficientnet_run, repetition,
                                                                                          netvlad_run, data, tmp_path,
                                                                                          capsys):
    image = data / "test" / "green" / "0.png"
    predict.main([str(efficientnet_run), str(image), "--explain", "--pictures", str(tmp_path / "frozen")])
    assert (tmp_path / "frozen" / "0-gradcam.png").is_file()
    predict.main([str(netvlad_run), str(image), "--explain", "--pictures", str(tmp_path / "netvlad")])
    assert (tmp_path / "netvlad" / "0-gradcam.png").is_file()
    predict.main([str(repetition), str(image), "--explain", "--pictures", str(tmp_path / "ensemble")])
    assert (tmp_path / "ensemble" / "0-gradcam.png").is_file()
    assert "the mean of the fold models' maps" in capsys.readouterr().out


def test_explain_never_writes_over_an_image_being_predicted_and_shortens_long_names(shallow_run, data, tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    shutil.copy(data / "test" / "red" / "0.png", pictures / "x-gradcam.png")  # an image of the user's
    shutil.copy(data / "test" / "green" / "0.png", tmp_path / "x.png")
    long_name = tmp_path / ("a" * 250 + ".png")
    shutil.copy(data / "test" / "blue" / "0.png", long_name)
    before = (pictures / "x-gradcam.png").read_bytes()
    predict.main([str(shallow_run), str(tmp_path / "x.png"), str(pictures / "x-gradcam.png"), str(long_name),
                  "--explain", "--pictures", str(pictures), "--force"])
    assert (pictures / "x-gradcam.png").read_bytes() == before  # predicted, never written over
    assert (pictures / "x-2-gradcam.png").is_file() and (pictures / "x-gradcam-gradcam.png").is_file()
    assert (pictures / ("a" * predict.MAX_PICTURE_BASE + "-gradcam.png")).is_file()
