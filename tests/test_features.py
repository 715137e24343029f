"""Frozen backbones as feature extractors: shapes, frozenness, the feature cache."""
import numpy as np
import pytest
import torch
from torch import nn

from common import features
from common.backbones import BACKBONES
from common.cache import ArrayCache, MappedArray
from common.cli import UserError
from common.data import normalize
from common.features import extract_features, feature_cache_key, load_backbone
from conftest import CreatesFile


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


def test_cache_skips_the_backbone(random_backbones, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "_feature_cache", {})
    backbone = random_backbones["efficientnet_lite0"]
    calls = []
    hook = backbone.register_forward_hook(lambda *args: calls.append(1))
    images = random_images(3, seed=2)
    first = extract_features(backbone, images, batch_size=2, precision="fp32", cache_dir=tmp_path)
    assert isinstance(first, MappedArray)  # kept on disk, read a batch at a time
    assert len(calls) == 2 and first.shape == (3, 1280) and first.dtype == torch.float32
    assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first[:])
    monkeypatch.setattr(features, "_feature_cache", {})  # a new process: only the disk cache is left
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
    monkeypatch.setattr(features, "_feature_cache", {})
    images = random_images(4, seed=4)
    fp32 = extract_features(random_backbones["resnet50"], images, precision="fp32")
    bf16 = extract_features(random_backbones["resnet50"], images, precision="bf16")
    assert not torch.equal(fp32, bf16)  # bf16 really ran
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() > 0.99


def test_a_pickled_or_corrupt_feature_cache_entry_is_recomputed_never_unpickled(random_backbones, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(features, "_feature_cache", {})
    backbone, images = random_backbones["resnet50"], random_images(2, seed=3)
    first = extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:]
    entry = next(tmp_path.iterdir())
    planted = tmp_path.parent / "pwned"
    with open(entry, "wb") as f:
        np.save(f, np.array([CreatesFile(planted)], dtype=object), allow_pickle=True)
    monkeypatch.setattr(features, "_feature_cache", {})
    assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first)
    assert not planted.exists()
    assert np.load(entry, allow_pickle=False).shape == (2, 2048)  # replaced by the real features


def test_a_cached_feature_entry_holding_nan_is_computed_again(random_backbones, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(features, "_feature_cache", {})
    backbone, images = random_backbones["resnet50"], random_images(2, seed=5)
    first = extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:]
    entry = next(tmp_path.iterdir())
    ArrayCache(tmp_path).put(entry.stem, np.full((2, 2048), np.nan, np.float32))  # with a valid digest
    monkeypatch.setattr(features, "_feature_cache", {})
    assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first)
    assert f"{entry}: cached features hold NaN or infinite values; computed again" in capsys.readouterr().err
    assert np.isfinite(np.load(entry)).all()  # replaced by the real features


def test_non_finite_fresh_features_are_refused_in_one_line_and_never_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "_feature_cache", {})
    backbone = random_efficientnet_lite0(0)
    with torch.no_grad():
        next(backbone.parameters()).fill_(float("inf"))  # as broken weights would make them
    with pytest.raises(UserError, match="efficientnet_lite0 backbone .random init. gives NaN or infinite features at "
                                        "precision fp32: its weights are broken, or try --precision fp32"):
        extract_features(backbone, random_images(2, seed=6), precision="fp32", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())
