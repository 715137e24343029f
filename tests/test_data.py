import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from common.cli import UserError
from common.data import load_splits, normalize, open_rgb, report_transform
from conftest import make_split


def test_splits_load_with_report_preprocessing(tmp_path):
    data = load_splits(make_split(tmp_path / "d"))
    assert data.classes == ["blue", "green", "red"]
    assert [len(s) for s in data.splits().values()] == [18, 6, 6]
    assert data.train.inputs.shape == (18, 3, 224, 224) and data.train.inputs.dtype == torch.uint8
    # Same pixels as the plain torchvision pipeline: resize 256, centre-crop 224.
    plain = ImageFolder(str(tmp_path / "d" / "train"), transform=report_transform())
    image, label = plain[5]
    assert torch.equal(data.train.inputs[5], image) and data.train.labels[5] == label


def test_normalize_matches_imagenet_statistics():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(normalize(x)[0, :, 0, 0], expected)


def test_second_load_comes_from_cache_without_decoding(tmp_path, monkeypatch):
    root = make_split(tmp_path / "d")
    first = load_splits(root)
    monkeypatch.setattr("common.data.open_rgb", lambda path: pytest.fail(f"decoded {path} again"))
    second = load_splits(root)
    assert torch.equal(first.test.inputs, second.test.inputs)


def test_batches_cover_every_sample_once_and_shuffle_with_generator(tmp_path):
    split = load_splits(make_split(tmp_path / "d")).train
    plain = torch.cat([y for _, y in split.batches(4)])
    assert torch.equal(plain, split.labels)
    shuffled = [y for _, y in split.batches(4, torch.Generator().manual_seed(1))]
    assert [len(y) for y in shuffled] == [4, 4, 4, 4, 2]
    assert sorted(torch.cat(shuffled).tolist()) == sorted(split.labels.tolist())


def test_split_class_mismatch_names_the_difference(tmp_path):
    root = make_split(tmp_path / "d")
    (root / "test" / "red").rename(root / "test" / "purple")
    with pytest.raises(UserError, match=r"test lacks \['red'\] and has extra \['purple'\]"):
        load_splits(root)


def test_missing_split_folder_and_empty_split_are_clear_errors(tmp_path):
    root = make_split(tmp_path / "d")
    with pytest.raises(UserError, match="no train, validation, test folder"):
        load_splits(tmp_path / "nothing")
    for f in (root / "validation").rglob("*.png"):
        f.unlink()
    with pytest.raises(UserError, match="validation holds no images"):
        load_splits(root)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    rgb = Image.new("RGB", (8, 8), (200, 100, 50))
    image = {"I;16": Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)),
             "RGBA": Image.new("RGBA", (8, 8), (0, 0, 0, 0))}.get(mode) or rgb.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path)
    out = open_rgb(path)
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode == "RGBA":  # fully transparent -> white, not PIL's black
        assert out.getpixel((0, 0)) == (255, 255, 255)
    if mode == "I;16":  # 16-bit range scaled to 8 bits, not clipped to 255
        assert out.getpixel((0, 0))[0] == 40000 // 256
