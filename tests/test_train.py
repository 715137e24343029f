import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import common.run
from common.cli import UserError
from common.data import model_input
from common.run import train_and_report
from common.task import Task
from common.train import StopAfterEpoch, topk_correct
from conftest import REPO, start_test_run, with_signals


class ImagesIn(nn.Module):
    """model_input as a layer: the training loop hands image models their uint8 batches."""

    def forward(self, x):
        return model_input(x)


def tiny_model(num_classes=3):
    """Mean colour -> class, with dropout so that resuming must restore the RNG too."""
    return nn.Sequential(ImagesIn(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 16), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(16, num_classes), nn.LogSoftmax(dim=1))


def run(data, out, *argv):
    r = start_test_run(["--data", str(data), "--out", str(out), "--lr", "0.05", "--precision", "fp32",
                        "--compile", "off", *argv], compiles=True)  # a later --compile wins
    return train_and_report(tiny_model(len(r.data.classes)), r, "tiny")


def test_loop_learns_separable_data_to_100_percent(data, tmp_path):
    metrics = run(data, tmp_path / "out", "--epochs", "15")
    assert metrics["train"]["top1"] == 100 and metrics["test"]["top1"] == 100
    assert metrics["test"]["loss"] < 0.5


def test_same_seed_gives_identical_metrics_and_other_seed_differs(data, tmp_path):
    a = run(data, tmp_path / "a", "--seed", "3")
    b = run(data, tmp_path / "b", "--seed", "3")
    c = run(data, tmp_path / "c", "--seed", "4")
    assert a == b and a != c


def test_resume_ends_with_the_same_metrics_as_an_uninterrupted_run(data, tmp_path):
    whole = run(data, tmp_path / "whole", "--epochs", "4")
    run(data, tmp_path / "split", "--epochs", "2")
    resumed = run(data, tmp_path / "split", "--epochs", "4", "--resume")
    assert resumed == whole
    history = (tmp_path / "split" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 4


def test_config_and_table_say_one_process_trained_it_and_its_key_does_not(data, tmp_path, capsys):
    run(data, tmp_path / "out", "--epochs", "1")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["processes"] == 1 and "rank_devices" not in config  # one device: nothing to list
    assert (tmp_path / "out" / "metrics.md").read_text().startswith("**tiny** (1 process)\n")
    assert len((tmp_path / "out" / "confusion.csv").read_text().splitlines()) == 1 + 3  # beside confusion.png
    out = capsys.readouterr().out
    assert "; cpu, fp32; 1 process; " in out and f"tiny ({tmp_path / 'out'}; 1 process)" in out
    key = torch.load(tmp_path / "out" / "last.pt", weights_only=True)["key"]
    assert not any("process" in name for name in key)  # one-process checkpoints from before still resume


def test_resume_refuses_other_settings_and_missing_checkpoint(data, tmp_path):
    run(data, tmp_path / "out", "--epochs", "1")
    with pytest.raises(UserError, match="other settings: --lr 0.05 in the checkpoint, 0.01 now"):
        run(data, tmp_path / "out", "--epochs", "2", "--resume", "--lr", "0.01")
    with pytest.raises(UserError, match="holds no checkpoint"):
        run(data, tmp_path / "fresh", "--resume")


def test_earlier_run_is_kept_unless_forced(data, tmp_path):
    run(data, tmp_path / "out", "--epochs", "1")
    before = (tmp_path / "out" / "metrics.json").read_text()
    with pytest.raises(UserError, match="already holds a run"):
        run(data, tmp_path / "out", "--epochs", "1")
    assert (tmp_path / "out" / "metrics.json").read_text() == before
    run(data, tmp_path / "out", "--epochs", "2", "--force")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["arguments"]["epochs"] == 2


def test_nan_loss_stops_with_the_epoch_named(data, tmp_path):
    r = start_test_run(["--data", str(data), "--out", str(tmp_path / "o")], epochs=3)

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(float("nan")))

        def forward(self, x):
            return torch.log_softmax(model_input(x).mean(dim=(2, 3)) * self.scale, dim=1)

    with pytest.raises(UserError, match=r"training loss is nan at the first step, before any update \(so not because "
                                        r"of --lr\)") as refused:
        train_and_report(Broken(), r, "broken")
    assert "lower --lr" not in str(refused.value)


def test_a_loss_not_finite_from_the_start_does_not_blame_the_learning_rate(data, tmp_path):
    import task3_netvlad
    with pytest.raises(UserError, match="at the first step, before any update") as refused:
        task3_netvlad.main(["--data", str(data), "--out", str(tmp_path / "o"), "--alpha", "1e300", "--clusters", "2",
                            "--epochs", "1", "--compile", "off", "--device", "cpu"])
    assert "lower --lr" not in str(refused.value)


def test_topk_against_hand_computed_cases():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.15, 0.05],   # label 1: top-1 hit
                           [0.3, 0.1, 0.4, 0.2, 0.0],     # label 0: second -> top-3 hit
                           [0.5, 0.2, 0.1, 0.15, 0.05],   # label 4: last -> miss
                           [0.1, 0.2, 0.3, 0.35, 0.05]])  # label 1: third -> top-3 hit
    labels = torch.tensor([1, 0, 4, 1])
    assert topk_correct(scores, labels, (1, 3)) == [1, 3]
    assert topk_correct(scores, labels, (5,)) == [4]


def test_topk_caps_k_at_number_of_classes():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert topk_correct(scores, torch.tensor([0, 0, 1]), (1, 3)) == [1, 3]


def test_bad_arguments_are_clear_errors(data, tmp_path):
    with pytest.raises(UserError, match="--epochs -1 is out of range"):
        run(data, tmp_path / "o", "--epochs", "-1")
    with pytest.raises(UserError, match="no such folder"):
        run(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write to --out"):
        run(data, tmp_path / "file" / "out")
    with pytest.raises(UserError, match="no such device"):
        run(data, tmp_path / "o", "--device", "cuda:7" if torch.cuda.is_available() else "cuda")


def test_ctrl_c_finishes_the_epoch_saves_and_resumes_to_the_same_metrics(data, tmp_path, default_signals):
    whole = run(data, tmp_path / "whole", "--epochs", "4")

    calls = []

    def press_ctrl_c_in_epoch_2(module, inputs):
        calls.append(module.training)
        if sum(calls) == 5:  # the 5th training batch: 4 batches of 5 make one epoch of 18 images
            os.kill(os.getpid(), signal.SIGINT)

    r = start_test_run(["--data", str(data), "--out", str(tmp_path / "cut"), "--lr", "0.05", "--precision", "fp32"])
    model = tiny_model()
    model.register_forward_pre_hook(press_ctrl_c_in_epoch_2)
    with pytest.raises(SystemExit) as stopped:
        train_and_report(model, r, "tiny")
    assert stopped.value.code == 130
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 2
    resumed = run(data, tmp_path / "cut", "--epochs", "4", "--resume")
    assert resumed == whole


def test_a_repeated_sigterm_is_the_same_request_and_a_second_ctrl_c_quits(default_signals):
    # Slurm signals the job and each of its processes, and reproduce.py forwards its own SIGTERM too:
    # a run must not take the second as "quit at once" and lose the epochs since its last checkpoint.
    with StopAfterEpoch() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


def start_task2(data, out, *argv, env=None, ignored=()):
    """task2_shallow.py in a process of its own, tiny and in eager mode unless argv says otherwise,
    its stop signals at their default but those `ignored`."""
    command = [sys.executable, "-u", str(REPO / "task2_shallow.py"), "--data", str(data), "--out", str(out),
               "--device", "cpu", "--batch-size", "6", "--compile", "off", *argv]
    return subprocess.Popen(with_signals(command, ignored), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "REPRO_CACHE_DIR": str(out.parent / "cache"), **(env or {})})


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_early_saves_a_checkpoint_at_the_epochs_end_and_exits_128_plus_it(data, tmp_path, signum):
    # Slurm's time limit sends SIGTERM, a closed terminal SIGHUP: long before CHECKPOINT_EVERY_S.
    out = tmp_path / "out"
    child = start_task2(data, out, "--epochs", "50")
    for line in child.stdout:
        if line.startswith("epoch   1/50"):
            child.send_signal(signum)
            break
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signum, stderr
    assert f"{signal.Signals(signum).name}: stopping after this epoch to save a checkpoint" in stderr
    assert "Traceback" not in stderr and "continue with --resume" in stderr
    epochs = torch.load(out / "last.pt", weights_only=True)["epoch"]
    resumed = start_task2(data, out, "--epochs", str(epochs + 1), "--resume")
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0 and f"resuming {out} after epoch {epochs}" in stdout, stderr


@pytest.mark.slow
def test_a_run_started_under_nohup_trains_on_through_sighup(data, tmp_path):
    child = start_task2(data, tmp_path / "out", "--epochs", "3", ignored=(signal.SIGHUP,))
    for line in child.stdout:
        if line.startswith("epoch   1/3"):
            child.send_signal(signal.SIGHUP)  # the terminal nohup shields it from closes
            break
    stdout, stderr = child.communicate(timeout=600)
    assert child.returncode == 0 and "stopping" not in stderr, stderr
    assert "epoch   3/3" in stdout and (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_a_compiler_that_fails_on_real_code_falls_back_to_eager_and_is_recorded(data, tmp_path):
    # It answers --version, so compile_unavailable passes it; inductor's first C++ build then fails.
    compiler = tmp_path / "cxx"
    compiler.write_text('#!/bin/sh\n[ "$1" = --version ] && echo fake 1.0 && exit 0\nexit 1\n')
    compiler.chmod(0o755)
    child = start_task2(data, tmp_path / "out", "--epochs", "1", "--compile", "auto",
                        env={"CXX": str(compiler), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0 and "Traceback" not in stderr, stderr
    assert stderr.count("warning: torch.compile failed (") == 1 and "training in eager mode" in stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["compiled"] is False and config["compile_error"] and "\n" not in config["compile_error"]


# A task around the tiny model, for run_or_reuse
TINY = Task("test", "tiny", 4, 5, build_model=lambda config, num_classes: tiny_model(num_classes))


def tiny_config(data, out, epochs, **settings):
    """A TINY run's configuration, trained as run() trains."""
    return TINY.config(data=data, out=out, epochs=epochs, lr=0.05, precision="fp32", **settings)


@pytest.mark.slow
def test_compiled_training_is_deterministic_resumable_and_recorded(data, tmp_path):
    """torch.compile rounds differently from eager, but the same command gives the same metrics,
    and a compiled run resumed halfway ends where the uninterrupted compiled run does."""
    a = run(data, tmp_path / "a", "--compile", "on")
    b = run(data, tmp_path / "b", "--compile", "on")
    assert a == b
    run(data, tmp_path / "cut", "--compile", "on", "--epochs", "2")
    assert run(data, tmp_path / "cut", "--compile", "on", "--epochs", "4", "--resume") == a
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["compiled"] is True and config["threads"] == torch.get_num_threads()  # both change the rounding
    eager = run(data, tmp_path / "eager")
    assert json.loads((tmp_path / "eager" / "config.json").read_text())["compiled"] is False
    for split in a:  # same science: the same predictions on this easy data, losses close
        assert a[split]["top1"] == eager[split]["top1"]
        assert a[split]["loss"] == pytest.approx(eager[split]["loss"], rel=0.05, abs=1e-3)


def test_a_model_no_image_can_describe_costs_a_warning_not_the_run(data, tmp_path, monkeypatch, capsys):
    def fails(model, title):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(common.run, "architecture_markdown", fails)
    metrics = run(data, tmp_path / "out", "--epochs", "1")
    assert (tmp_path / "out" / "metrics.json").exists() and not (tmp_path / "out" / "architecture.md").exists()
    assert metrics["test"] and "its layer table or pictures could not be made: mat1 and mat2" in capsys.readouterr().err


def test_a_run_writes_its_layer_table(data, tmp_path):
    run(data, tmp_path / "out", "--epochs", "1")
    table = (tmp_path / "out" / "architecture.md").read_text()
    assert "| `3` | Linear | 1 × 16 | 64 | 64 |" in table and "| **total** | | | **115** | **115** |" in table
