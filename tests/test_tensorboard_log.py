import csv
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from common.folds import FOLDS, fold_number
from common.tensorboard_log import SCALARS, TEST_METRICS, run_hparams
from test_train import run

SERVER_START = 120  # seconds tensorboard may take to serve on a loaded 2-core machine


def events(out):
    accumulator = EventAccumulator(str(out), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def history(out):
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_scalars_equal_history(accumulator, rows):
    for column, tag in SCALARS.items():
        logged = [(e.step, e.value) for e in accumulator.Scalars(tag)]
        assert [step for step, _ in logged] == [int(row["epoch"]) for row in rows], tag
        assert [value for _, value in logged] == pytest.approx([float(row[column]) for row in rows], rel=1e-6), tag


def test_events_equal_history_and_hold_the_test_metrics_settings_and_confusion_matrix(data, tmp_path):
    metrics = run(data, tmp_path / "run", "--epochs", "3", "--seed", "5")
    accumulator = events(tmp_path / "run")
    assert_scalars_equal_history(accumulator, history(tmp_path / "run"))
    for name, tag in TEST_METRICS.items():
        [scalar] = accumulator.Scalars(tag)
        assert (scalar.step, scalar.value) == (3, pytest.approx(metrics["test"][name], rel=1e-6))
    start = hparams_metadata.parse_session_start_info_plugin_data(
        accumulator.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content)
    settings = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    assert settings["task"] == "test" and settings["seed"] == 5 and settings["epochs"] == 3
    assert settings["fold"] == -1 and settings["data"] == str(data)  # one split, not a fold
    [image] = accumulator.Images("test/confusion_matrix")
    assert (image.width, image.height) == Image.open(tmp_path / "run" / "confusion.png").size


def test_a_resumed_run_ends_with_events_equal_to_its_history(data, tmp_path):
    run(data, tmp_path / "run", "--epochs", "2")
    run(data, tmp_path / "run", "--epochs", "4", "--resume")
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 2  # the second purges and relogs
    assert_scalars_equal_history(events(tmp_path / "run"), history(tmp_path / "run"))


def test_force_replaces_the_earlier_runs_events(data, tmp_path):
    run(data, tmp_path / "run", "--epochs", "3")
    (tmp_path / "run" / "events.out.tfevents.mine").mkdir()  # a folder of that name: not TensorBoard's file
    run(data, tmp_path / "run", "--epochs", "2", "--force")
    assert len([p for p in (tmp_path / "run").glob("events.out.tfevents.*") if p.is_file()]) == 1
    (tmp_path / "run" / "events.out.tfevents.mine").rmdir()  # left alone; tensorboard's reader would not skip it
    assert_scalars_equal_history(events(tmp_path / "run"), history(tmp_path / "run"))


def test_no_tensorboard_writes_no_events(data, tmp_path):
    run(data, tmp_path / "run", "--epochs", "1", "--no-tensorboard")
    assert (tmp_path / "run" / "metrics.md").is_file()
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["arguments"]["no_tensorboard"] is True


def test_without_the_tensorboard_package_a_run_warns_once_and_finishes(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now raises ImportError
    run(data, tmp_path / "run", "--epochs", "2")
    assert capsys.readouterr().err.count("tensorboard package is not installed") == 1
    assert (tmp_path / "run" / "metrics.md").is_file()
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_the_fold_a_run_trained_on_is_known_only_beside_folds_csv(tmp_path):
    (tmp_path / "fold3").mkdir()
    assert fold_number(tmp_path / "fold3") is None
    (tmp_path / FOLDS).write_text("")
    assert fold_number(tmp_path / "fold3") == 3
    assert fold_number(tmp_path / "fold03") is None and fold_number(tmp_path / "split") is None
    config = {"task": "t", "arguments": {"data": None, "out": tmp_path, "lr": 1e-3, "augment": False}}
    assert run_hparams(config, tmp_path / "fold3") == {"task": "t", "data": "None", "out": str(tmp_path),
                                                       "lr": 1e-3, "augment": False, "fold": 3}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard(logdir, port):
    return subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
                             "--host", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def fetch(port, path, **query):
    url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def served_runs(port, server):
    """The runs tensorboard serves, once it answers (it loads the logdir in the background)."""
    deadline = time.monotonic() + SERVER_START
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stdout.read()
        try:
            runs = fetch(port, "/data/runs")
            if runs:
                return runs
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"tensorboard served no run within {SERVER_START} s")


@pytest.mark.slow
def test_tensorboard_serves_a_runs_scalars_over_http(data, tmp_path):
    run(data, tmp_path / "logs" / "task" / "rep0" / "fold0", "--epochs", "2")
    rows = history(tmp_path / "logs" / "task" / "rep0" / "fold0")
    port = free_port()
    server = tensorboard(tmp_path / "logs", port)
    try:
        assert served_runs(port, server) == ["task/rep0/fold0"]
        served = fetch(port, "/data/plugin/scalars/scalars", run="task/rep0/fold0", tag="top1/validation")
        assert [step for _, step, _ in served] == [1, 2]
        assert [value for _, _, value in served] == pytest.approx([float(r["val_top1"]) for r in rows], rel=1e-6)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_tensorboard_on_a_port_in_use_says_so_in_a_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = tensorboard(tmp_path, taken.getsockname()[1])
        output, _ = server.communicate(timeout=SERVER_START)
    assert server.returncode != 0
    assert "already in use" in output and "Traceback" not in output
