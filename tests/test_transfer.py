import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import predict
import task1_efficientnet
import task1_googlenet
import task1_resnet
import task1_timm
import timm
from common.backbones import BACKBONES
from common.features import load_backbone
from common.weights import WeightsUnavailable, package_weight_file
from common.cli import UserError
from common.run import count_parameters, train_and_report
from common.transfer import linear_head
from conftest import REPO, start_test_run

SPLIT_COUNTS = (5, 2, 3)  # images per class in the data fixture's train, validation and test


@pytest.mark.parametrize("name", list(BACKBONES))
def test_head_size_and_trainable_parameters(name):
    dim = BACKBONES[name].feature_dim
    head = linear_head(dim, 7)
    assert head(torch.zeros(2, dim)).shape == (2, 7)
    # The report counted weights only: 1024 x 7 = 7,168 for GoogLeNet, 4096 x 7 = 28,672 for VGG16.
    assert count_parameters(head) == (dim * 7 + 7, dim * 7 + 7)


def run_cached(data, out, *argv):
    task1_efficientnet.main(["--data", str(data), "--out", str(out), "--epochs", "6", "--batch-size", "4",
                             "--lr", "0.01", "--precision", "fp32", *argv])
    return json.loads((out / "metrics.json").read_text())


def run_uncached(data, out):
    """The tutorial way: the whole backbone + head forward on every image in every epoch."""
    run = start_test_run(["--data", str(data), "--out", str(out), "--lr", "0.01", "--precision", "fp32"],
                         epochs=6, batch_size=4)
    backbone = load_backbone("efficientnet_lite0")  # same RNG use as task 1's, so the same head init
    model = nn.Sequential(backbone, linear_head(BACKBONES["efficientnet_lite0"].feature_dim, len(run.data.classes)))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    metrics = train_and_report(model, run, "uncached")
    return metrics, backbone, before


@pytest.mark.slow
def test_cached_features_train_like_a_forward_every_epoch(data, tmp_path):
    cached = run_cached(data, tmp_path / "cached")
    uncached, backbone, before = run_uncached(data, tmp_path / "uncached")
    one_image = 100 / 9
    for split in ("train", "validation", "test"):
        assert abs(cached[split]["top1"] - uncached[split]["top1"]) <= one_image + 1e-9
        assert cached[split]["loss"] == pytest.approx(uncached[split]["loss"], rel=0.05)
    # The frozen backbone got no gradients and is bit-identical after training.
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


@pytest.mark.slow
def test_config_records_backbone_and_weights(data, tmp_path):
    run_cached(data, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["backbone"] == "efficientnet_lite0" and config["pretrained"] is True
    assert config["weights"].endswith("efficientnet-lite0-57934424.pth")
    assert config["parameters"] == {"trainable": 1280 * 3 + 3, "total": 1280 * 3 + 3}
    assert config["backbone_parameters"] > 3_000_000


@pytest.mark.slow
def test_no_pretrained_says_so_in_every_output(data, tmp_path, offline):
    out = tmp_path / "run"
    task1_resnet.main(["--data", str(data), "--out", str(out), "--epochs", "1", "--no-pretrained"])
    assert "random-init backbone" in (out / "metrics.md").read_text()
    assert json.loads((out / "config.json").read_text())["weights"] == "random init"


def test_missing_weights_name_the_file_and_the_option(data, tmp_path, offline):
    with pytest.raises(WeightsUnavailable, match=r"resnet50-0676ba61\.pth.*--weights FILE"):
        task1_resnet.main(["--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1"])


@pytest.mark.slow
@pytest.mark.parametrize("content, message", [(None, "No such file"), (b"not a checkpoint", "not a PyTorch weight file")])
def test_bad_weights_file_is_one_line_and_exit_2(data, tmp_path, content, message):
    weights = tmp_path / "weights.pth"
    if content is not None:
        weights.write_bytes(content)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "task1_resnet.py", "--data", str(data), "--out", str(tmp_path / "o"),
                           "--weights", str(weights)], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_resume_refuses_other_backbone_weights_or_no_pretrained(data, tmp_path):
    out = tmp_path / "run"
    run_cached(data, out, "--epochs", "1")
    package = package_weight_file("efficientnet_lite0", BACKBONES["efficientnet_lite0"])
    state = torch.load(package, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 0.01
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"backbone weights \(sha1\) [0-9a-f]{40} in the checkpoint, [0-9a-f]{40} now"):
        run_cached(data, out, "--epochs", "2", "--resume", "--weights", str(tmp_path / "other.pth"))
    with pytest.raises(UserError, match="--no-pretrained False in the checkpoint, True now"):
        run_cached(data, out, "--epochs", "2", "--resume", "--no-pretrained")
    shutil.copy(package, tmp_path / "same.pth")  # the same weights under another name are the same run
    run_cached(data, out, "--epochs", "2", "--resume", "--weights", str(tmp_path / "same.pth"))
    assert json.loads((out / "config.json").read_text())["arguments"]["epochs"] == 2


def test_weights_with_no_pretrained_is_refused(data, tmp_path):
    with pytest.raises(UserError, match="--weights and --no-pretrained contradict each other"):
        task1_resnet.main(["--data", str(data), "--out", str(tmp_path / "o"), "--no-pretrained",
                           "--weights", str(tmp_path / "w.pth")])
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_finetune_trains_the_backbone_says_so_and_predict_rebuilds_it(data, tmp_path):
    out = tmp_path / "ft"
    metrics = run_cached(data, out, "--finetune", "--epochs", "1")
    trained = torch.load(out / "last.pt", weights_only=True)["model"]
    backbone = load_backbone("efficientnet_lite0")
    start, weights = backbone.state_dict(), [k for k, _ in backbone.named_parameters()]
    changed = [k for k in weights if not torch.equal(trained[f"backbone.{k}"], start[k])]
    assert len(changed) == len(weights)  # the backbone learnt (the frozen path: bit-identical, above)
    assert all(torch.equal(trained[f"backbone.{k}"], v) for k, v in start.items() if "running_" in k)  # BN stats kept
    config = json.loads((out / "config.json").read_text())
    assert config["finetuned"] is True and config["parameters"]["trainable"] > 3_000_000
    assert "fine-tuned" in (out / "metrics.md").read_text()
    scores = predict.main([str(out), str(data / "test"), "--checkpoint", "last"])
    assert scores[data / "test"] == metrics["test"]


@pytest.mark.slow
def test_finetune_backbone_learns_slower_than_the_head(data, tmp_path):
    run_cached(data, tmp_path / "ft", "--finetune", "--epochs", "1", "--backbone-lr-factor", "0.5")
    groups = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [0.01, 0.005]


@pytest.mark.slow
def test_frozen_augment_trains_on_cached_views_and_evaluates_unaugmented(data, tmp_path):
    plain = run_cached(data, tmp_path / "plain", "--epochs", "2")
    augmented = run_cached(data, tmp_path / "aug", "--epochs", "2", "--augment")
    assert augmented != plain
    assert "augmented views" in json.loads((tmp_path / "aug" / "config.json").read_text())["features"]
    assert "augmented" in (tmp_path / "aug" / "metrics.md").read_text()
    assert run_cached(data, tmp_path / "again", "--epochs", "2", "--augment") == augmented


@pytest.mark.parametrize("argv, message", [
    (["--finetune", "--no-pretrained"], "--finetune needs pretrained weights"),
    (["--backbone-lr-factor", "0.5"], "--backbone-lr-factor applies only with --finetune"),
    (["--finetune", "--backbone-lr-factor", "0"], r"must be in \(0, 1\]"),
])
def test_bad_finetune_combinations_are_refused(data, tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        run_cached(data, tmp_path / "o", *argv)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_resume_key_includes_finetune(data, tmp_path):
    run_cached(data, tmp_path / "run", "--epochs", "1")
    with pytest.raises(UserError, match="--finetune False in the checkpoint, True now"):
        run_cached(data, tmp_path / "run", "--epochs", "2", "--resume", "--finetune")


@pytest.mark.slow
def test_finetune_is_the_same_code_for_torchvision_backbones(data, tmp_path):
    """GoogLeNet (BatchNorm and dropout) from a weight file the test makes: the same --finetune path."""
    weights = tmp_path / "googlenet.pth"
    torch.save(BACKBONES["googlenet"].build().state_dict(), weights)
    out = tmp_path / "run"
    task1_googlenet.main(["--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                          "--precision", "fp32", "--weights", str(weights), "--finetune"])
    trained = torch.load(out / "last.pt", weights_only=True)["model"]
    start = load_backbone("googlenet", weights).state_dict()
    assert not torch.equal(trained["backbone.net.conv1.conv.weight"], start["net.conv1.conv.weight"])
    assert torch.equal(trained["backbone.net.conv1.bn.running_mean"], start["net.conv1.bn.running_mean"])
    assert "GoogLeNet, fine-tuned, linear head" in (out / "metrics.md").read_text()


@pytest.mark.slow
def test_a_finetuned_run_resumes_to_the_uninterrupted_result(data, tmp_path):
    whole = run_cached(data, tmp_path / "whole", "--finetune", "--epochs", "2")
    run_cached(data, tmp_path / "cut", "--finetune", "--epochs", "1")
    assert run_cached(data, tmp_path / "cut", "--finetune", "--epochs", "2", "--resume") == whole


SMALL_TIMM = "mobilenetv3_small_050"  # about a million parameters


@pytest.mark.slow
def test_any_timm_model_with_a_weights_file_trains_and_predicts(data, tmp_path, capsys):
    weights = tmp_path / "small.pt"
    torch.save(timm.create_model(SMALL_TIMM, pretrained=False).state_dict(), weights)
    out = tmp_path / "run"
    task1_timm.main(["--model", SMALL_TIMM, "--weights", str(weights), "--data", str(data), "--out", str(out),
                     "--epochs", "2", "--batch-size", "4", "--precision", "fp32"])
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == f"timm:{SMALL_TIMM}" and config["title"] == f"{SMALL_TIMM} (timm), frozen, linear head"
    assert config["parameters"]["trainable"] == 1024 * 3 + 3  # its head's hidden size (its num_features is 576)
    scores = predict.main([str(out), str(data / "test"), "--checkpoint", "last", "--weights", str(weights)])
    assert scores[data / "test"]["top1"] == metrics["test"]["top1"]
    assert scores[data / "test"]["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)
    with pytest.raises(UserError, match="not the ones the run used"):  # another model's random weights
        torch.save(timm.create_model(SMALL_TIMM, pretrained=False).state_dict(), tmp_path / "other.pt")
        predict.main([str(out), str(data / "test"), "--weights", str(tmp_path / "other.pt")])


def test_a_timm_model_is_named_or_refused_with_close_names(data, tmp_path, offline):
    with pytest.raises(UserError, match=r"--model resnet_18: no such timm model; close: resnet18"):
        task1_timm.main(["--model", "resnet_18", "--data", str(data), "--out", str(tmp_path / "o")])
    with pytest.raises(WeightsUnavailable, match=f"timm {SMALL_TIMM} weights are not in timm's cache .*--weights FILE"):
        task1_timm.main(["--model", SMALL_TIMM, "--data", str(data), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("pretrained", [[], ["--no-pretrained"]])
def test_a_bogus_pretrained_tag_is_one_line_naming_the_real_ones(data, tmp_path, pretrained):
    with pytest.raises(UserError) as error:
        task1_timm.main(["--model", "resnet18.no_such_tag", *pretrained, "--data", str(data), "--out", str(tmp_path)])
    message = str(error.value)
    assert "no pretrained tag no_such_tag" in message and "\n" not in message
    assert all(name.split(".")[1] in message for name in timm.list_pretrained("resnet18.*"))


def test_a_model_name_with_a_newline_stays_on_one_quoted_line(data, tmp_path):
    with pytest.raises(UserError) as error:
        task1_timm.main(["--model", "resnet18\nrm -rf ~", "--data", str(data), "--out", str(tmp_path / "o")])
    assert str(error.value).startswith("--model 'resnet18\\nrm -rf ~': no such timm model")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["test_vit3", "test_maxvit"])  # trained at 160: a position embedding, windows
def test_a_fixed_size_timm_model_trains_and_predicts_on_224_crops(data, tmp_path, model):
    out = tmp_path / "run"
    task1_timm.main(["--model", model, "--no-pretrained", "--data", str(data), "--out", str(out),
                     "--epochs", "2", "--batch-size", "4", "--precision", "fp32"])
    metrics = json.loads((out / "metrics.json").read_text())
    scores = predict.main([str(out), str(data / "test"), "--checkpoint", "last"])
    assert scores[data / "test"]["top1"] == metrics["test"]["top1"]


def test_a_model_that_cannot_run_on_224_crops_is_one_line_naming_its_size(data, tmp_path):
    # BotNet builds for 224, but timm cannot resample its 256 x 256 weights' relative position tables
    with pytest.raises(UserError, match=r"^--model botnet26t_256 needs 256 x 256 inputs \(.*\); this project feeds "
                                        r"it 224 x 224 crops, and timm cannot build it for them: choose another model$"):
        task1_timm.main(["--model", "botnet26t_256", "--no-pretrained", "--data", str(data), "--out", str(tmp_path)])
