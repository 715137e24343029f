"""predict.py: the same numbers as the run's own test row, top-k, CSV, and bad input."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import predict
import task1_efficientnet
import task2_shallow
import task3_netvlad
from common.cli import UserError
from conftest import make_image, make_split

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("predict") / "data", counts=(4, 2, 3))


def train(main, data, out, *argv):
    main(["--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "4", "--precision", "fp32",
          *argv])
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("task, argv", [(task2_shallow, ["--compile", "off"]),
                                        (task3_netvlad, ["--compile", "off", "--clusters", "2"]),
                                        (task3_netvlad, ["--compile", "off", "--clusters", "2", "--init", "random"]),
                                        (task1_efficientnet, ["--no-pretrained"])])
def test_a_labelled_test_folder_repeats_the_runs_own_test_row_exactly(task, argv, data, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = train(task.main, data, tmp_path / "run", *argv)
    scores = predict.main([str(tmp_path / "run"), str(data / "test"), "--checkpoint", "last"])
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
    scores = predict.main([str(shallow_run), str(folder)])
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
    with pytest.raises(UserError, match="corrupt or not a checkpoint"):
        predict.main([str(run), str(data / "test")])
    assert not (tmp_path / "pwned").exists()


def test_task1_refuses_other_backbone_weights_and_names_the_option(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(task1_efficientnet.main, data, tmp_path / "run")
    package = json.loads((tmp_path / "run" / "config.json").read_text())["weights"]
    state = torch.load(package, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] * 1.01
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not the ones the run used.*--weights FILE"):
        predict.main([str(tmp_path / "run"), str(data / "test"), "--weights", str(tmp_path / "other.pth")])


def test_bad_input_from_the_command_line_is_one_line_and_exit_2(shallow_run, tmp_path):
    done = subprocess.run([sys.executable, "predict.py", str(shallow_run), str(tmp_path / "missing.jpg")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "no such file or folder" in done.stderr
    assert "Traceback" not in done.stderr
