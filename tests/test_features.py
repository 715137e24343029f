"""Frozen backbones as feature extractors: shapes, frozenness, the feature cache (per split and per image)."""
import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from common import features
from common.backbones import BACKBONES
from common.cache import ArrayCache, MappedArray, digest_matches
from common.cli import UserError
from common.data import normalize
from common.features import content_digests, extract_features, feature_cache_key, load_backbone, run_backbone
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


@contextlib.contextmanager
def images_through(backbone):
    """The size of each batch the backbone runs while the block runs."""
    batches = []
    hook = backbone.register_forward_hook(lambda module, args, output: batches.append(len(output)))
    try:
        yield batches
    finally:
        hook.remove()


def a_new_process(monkeypatch):
    """Only the disk cache is left, and each entry's digest is checked again on its first read."""
    monkeypatch.setattr(features, "_feature_cache", {})
    monkeypatch.setattr(ArrayCache, "checked", set())


def test_cache_skips_the_backbone(random_backbones, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "_feature_cache", {})
    backbone = random_backbones["efficientnet_lite0"]
    images = random_images(3, seed=2)
    with images_through(backbone) as batches:
        first = extract_features(backbone, images, batch_size=2, precision="fp32", cache_dir=tmp_path)
        assert isinstance(first, MappedArray)  # kept on disk, read a batch at a time
        assert batches == [2, 1] and first.shape == (3, 1280) and first.dtype == torch.float32
        assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first[:])
        a_new_process(monkeypatch)
        assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first[:])
        assert batches == [2, 1]
        assert [p.suffix for p in tmp_path.iterdir() if p.is_file()] == [".npy"]  # no temp files left behind
        assert [p.suffix for p in (tmp_path / "images").iterdir()] == [".npy"] * 3  # and one entry per image
        extract_features(backbone, images, precision="bf16", cache_dir=tmp_path)
        assert batches == [2, 1, 3]


def test_a_split_of_images_other_splits_held_runs_the_backbone_on_its_new_images_only(random_backbones, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(features, "_feature_cache", {})
    backbone = random_backbones["efficientnet_lite0"]
    images = random_images(6, seed=7)
    train = extract_features(backbone, images[:4], batch_size=2, precision="fp32", cache_dir=tmp_path)[:]
    test = extract_features(backbone, images[4:], batch_size=2, precision="fp32", cache_dir=tmp_path)[:]
    fold = images[[5, 1, 3, 0, 2, 4]]  # the same images in other roles, as in another cross-validation fold
    new = torch.cat([fold[:3], random_images(1, seed=8), fold[3:]])  # and one no split held
    a_new_process(monkeypatch)
    with images_through(backbone) as batches:
        assert torch.equal(extract_features(backbone, fold, batch_size=2, precision="fp32", cache_dir=tmp_path)[:],
                           torch.cat([train, test])[[5, 1, 3, 0, 2, 4]])  # the same bits
        assert batches == []
        with_new = extract_features(backbone, new, batch_size=2, precision="fp32", cache_dir=tmp_path)[:]
        assert batches == [1]
    assert torch.equal(with_new[[0, 1, 2, 4, 5, 6]], torch.cat([train, test])[[5, 1, 3, 0, 2, 4]])
    alone = extract_features(backbone, new[3:4], precision="fp32")
    assert torch.allclose(with_new[3], alone[0], rtol=0, atol=1e-5)  # a batch of 1 may round differently
    assert len(list((tmp_path / "images").iterdir())) == 7


def test_a_damaged_image_entry_is_computed_again_alone(random_backbones, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(features, "_feature_cache", {})
    backbone = random_backbones["efficientnet_lite0"]
    images = random_images(4, seed=9)
    first = extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:]
    entry = tmp_path / "images" / f"{feature_cache_key(backbone, 'fp32', content_digests(images)[1][2])}.npy"
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one feature: same size, a valid .npy, its SHA-256 no longer matching
    entry.write_bytes(bytes(data))
    a_new_process(monkeypatch)
    with images_through(backbone) as batches:
        again = extract_features(backbone, images[[2, 0, 1, 3]], precision="fp32", cache_dir=tmp_path)[:]
    assert batches == [1] and torch.equal(again[1:], first[[0, 1, 3]])
    assert torch.allclose(again[0], first[2], rtol=0, atol=1e-5)  # alone, a batch of 1 may round differently
    assert capsys.readouterr().err.count(f"{entry}: a damaged cache entry") == 1
    assert digest_matches(entry)


def test_augmented_views_are_computed_per_split_as_before(random_backbones, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "_feature_cache", {})
    backbone = random_backbones["efficientnet_lite0"]
    images = random_images(3, seed=10)
    view = extract_features(backbone, images, batch_size=2, precision="fp32", cache_dir=tmp_path, augment_seed=4)
    assert torch.equal(view[:], run_backbone(backbone, images, 2, "fp32", torch.device("cpu"), augment_seed=4))
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"]  # one entry, none per image
    with images_through(backbone) as batches:
        extract_features(backbone, images, batch_size=2, precision="fp32", cache_dir=tmp_path, augment_seed=4)
        extract_features(backbone, images[[1, 0, 2]], batch_size=2, precision="fp32", cache_dir=tmp_path,
                         augment_seed=4)
    assert batches == [2, 1]  # another order is another split, whose views differ: computed whole


def random_efficientnet_lite0(seed):
    torch.manual_seed(seed)
    return load_backbone("efficientnet_lite0", pretrained=False)


def test_cache_key_covers_images_precision_and_weights(random_backbones):
    backbone = random_backbones["efficientnet_lite0"]
    images = random_images(2, seed=3)
    changed = images.clone()
    changed[1, 0, 0, 0] ^= 1
    split, (first, second) = content_digests(images)
    assert content_digests(images.clone()) == (split, [first, second]) and first != second
    changed_split, changed_images = content_digests(changed)
    assert changed_split != split and changed_images[0] == first and changed_images[1] != second
    reordered_split, reordered_images = content_digests(images[[1, 0]])
    assert reordered_split != split and reordered_images == [second, first]  # a split is in order, an image alone
    assert content_digests(images.reshape(2, 3, 32, 128))[1][0] != first  # the same bytes in another shape
    key = feature_cache_key(backbone, "fp32", split)
    assert key != feature_cache_key(backbone, "bf16", split)
    assert key != feature_cache_key(backbone, "fp32", split, augment_seed=0)
    seed0, seed0_again, seed1 = (random_efficientnet_lite0(seed) for seed in (0, 0, 1))
    assert feature_cache_key(seed0, "fp32", first) == feature_cache_key(seed0_again, "fp32", first)
    assert feature_cache_key(seed0, "fp32", first) != feature_cache_key(seed1, "fp32", first)


def test_a_split_keeps_the_cache_key_it_had_before_features_were_cached_per_image():
    """Splits and augmented views cached before keep their entries (keys as commit 187702f made them)."""
    backbone = SimpleNamespace(name="resnet50", weights_fingerprint=lambda: "f" * 40)
    split = content_digests(torch.arange(2 * 3 * 8 * 8).reshape(2, 3, 8, 8).to(torch.uint8))[0]
    assert feature_cache_key(backbone, "fp32", split) == "resnet50-fp32-218b7f9b1976d8b15fde"
    assert feature_cache_key(backbone, "bf16", split, augment_seed=1) == "resnet50-bf16-5a6e000aeb47177f4ed1"


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
    planted = tmp_path.parent / "pwned"
    for entry in tmp_path.rglob("*.npy"):  # the split's entry and its images'
        with open(entry, "wb") as f:
            np.save(f, np.array([CreatesFile(planted)], dtype=object), allow_pickle=True)
    monkeypatch.setattr(features, "_feature_cache", {})
    assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first)
    assert not planted.exists()
    shapes = sorted(np.load(entry, allow_pickle=False).shape for entry in tmp_path.rglob("*.npy"))
    assert shapes == [(2, 2048), (2048,), (2048,)]  # replaced by the real features


def test_a_cached_feature_entry_holding_nan_is_computed_again(random_backbones, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(features, "_feature_cache", {})
    backbone, images = random_backbones["resnet50"], random_images(2, seed=5)
    first = extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:]
    damaged = sorted(tmp_path.rglob("*.npy"))  # the split's entry and its images'
    for entry in damaged:
        ArrayCache(entry.parent).put(entry.stem, np.full(np.load(entry).shape, np.nan, np.float32))  # a valid digest
    monkeypatch.setattr(features, "_feature_cache", {})
    assert torch.equal(extract_features(backbone, images, precision="fp32", cache_dir=tmp_path)[:], first)
    err = capsys.readouterr().err
    for entry in damaged:
        assert f"{entry}: cached features hold NaN or infinite values; computed again" in err
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
