import io
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from common.cli import UserError
import common.cache
import common.data
from common.cache import ArrayCache, digest_matches
from common.data import limit_aspect, load_splits, normalize, open_rgb, report_transform
from conftest import CreatesFile, make_image, make_split


def test_splits_load_with_report_preprocessing(tmp_path):
    data = load_splits(make_split(tmp_path / "d"))
    assert data.classes == ["blue", "green", "red"]
    assert [len(s) for s in data.splits().values()] == [18, 6, 6]
    assert data.train.inputs.shape == (18, 3, 224, 224) and data.train.inputs.dtype == torch.uint8
    # Same pixels as the plain torchvision pipeline: resize 256, centre-crop 224.
    plain = ImageFolder(str(tmp_path / "d" / "train"), transform=report_transform())
    image, label = plain[5]
    assert torch.equal(data.train.inputs[5], image) and data.train.labels[5] == label


def test_a_split_stays_on_disk_and_batches_read_only_their_images(tmp_path):
    data = load_splits(make_split(tmp_path / "d"), tmp_path / "cache")
    images = data.train.inputs
    assert all(isinstance(source, Path) for source in images.sources)  # cache files, not arrays in memory
    whole = images[:]
    assert torch.equal(images[torch.tensor([4, 0, 4])], whole[[4, 0, 4]])
    assert torch.equal(images[2:5], whole[2:5]) and torch.equal(images[3], whole[3])
    batches = list(data.train.batches(4, torch.Generator().manual_seed(0)))
    assert sorted(tuple(x.flatten()[:20].tolist()) for batch, _ in batches for x in batch) == \
        sorted(tuple(x.flatten()[:20].tolist()) for x in whole)


@pytest.mark.parametrize("change", ["delete", "fifo", "other dtype"])
def test_a_cache_file_deleted_or_replaced_during_a_run_is_one_error(tmp_path, change):
    data = load_splits(make_split(tmp_path / "d"), tmp_path / "cache")
    file = data.train.inputs.sources[1]
    file.unlink()
    if change == "fifo":
        os.mkfifo(file)  # reading it would wait forever
    elif change == "other dtype":
        np.save(file, np.zeros((3, 224, 224), np.float32))  # same shape: would be cast silently
    with pytest.raises(UserError, match="cache file .* went missing or changed during the run"):
        list(data.train.batches(4))


def test_a_folder_in_place_of_one_cache_entry_keeps_that_image_in_memory_only(tmp_path, capsys):
    root, cache_dir = make_split(tmp_path / "d"), tmp_path / "cache"
    first = load_splits(root, cache_dir)
    expected, entry = first.train.inputs[:], first.train.inputs.sources[0]
    entry.unlink()
    entry.mkdir()
    again = load_splits(root, cache_dir)
    assert torch.equal(again.train.inputs[:], expected)
    assert isinstance(again.train.inputs.sources[0], np.ndarray)  # that one in memory
    assert all(isinstance(source, Path) for source in again.test.inputs.sources)  # the rest still cached
    assert "a folder where a cache entry belongs" in capsys.readouterr().err


def test_normalize_matches_imagenet_statistics():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(normalize(x)[0, :, 0, 0], expected)


def test_second_load_comes_from_cache_without_decoding(tmp_path, monkeypatch):
    root = make_split(tmp_path / "d")
    first = load_splits(root)
    monkeypatch.setattr("common.data.open_rgb", lambda path: pytest.fail(f"decoded {path} again"))
    second = load_splits(root)
    assert torch.equal(first.test.inputs[:], second.test.inputs[:])


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


def png_claiming_size(path, width, height):
    """A tiny valid PNG whose header claims width x height: a decompression bomb for PIL's check."""
    buffer = io.BytesIO()
    Image.new("1", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


def test_unreadable_images_are_named_and_left_out(tmp_path, capsys):
    root = make_split(tmp_path / "d")
    good = (root / "train" / "red" / "0.png").read_bytes()
    bad = {"truncated.jpg": None, "empty.png": b"", "text.jpg": b"just some text\n", "bomb.png": None}
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "train" / "red" / "truncated.jpg", quality=90)
    truncated = (root / "train" / "red" / "truncated.jpg").read_bytes()
    (root / "train" / "red" / "truncated.jpg").write_bytes(truncated[:len(truncated) // 2])
    (root / "train" / "red" / "empty.png").write_bytes(bad["empty.png"])
    (root / "train" / "red" / "text.jpg").write_bytes(bad["text.jpg"])
    png_claiming_size(root / "train" / "red" / "bomb.png", 30000, 30000)
    data = load_splits(root)
    err = capsys.readouterr().err
    for name in bad:
        assert f"{root / 'train' / 'red' / name}: cannot be read as an image" in err
    assert "DecompressionBombError" in err
    assert f"{root / 'train'}: using 18 images, left out 4" in err
    assert len(data.train) == 18 and len(data.train.paths) == len(data.train.digests) == 18
    assert not any(Path(p).name in bad for p in data.train.paths)
    # labels stay aligned with the images that were kept
    red = data.classes.index("red")
    assert data.train.labels.tolist().count(red) == 6
    assert (root / "train" / "red" / "0.png").read_bytes() == good  # nothing of the user's touched


def test_a_split_emptied_by_unreadable_images_is_an_error(tmp_path):
    root = make_split(tmp_path / "d")
    for f in (root / "test").rglob("*.png"):
        f.write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"test: none of its 6 images can be read"):
        load_splits(root)


def test_split_folders_without_class_folders_are_a_clear_error(tmp_path):
    root = make_split(tmp_path / "d")
    shutil.rmtree(root / "validation")
    (root / "validation").mkdir()
    (root / "validation" / "loose.png").write_bytes((root / "test" / "red" / "0.png").read_bytes())
    with pytest.raises(UserError, match=r"validation holds no class folders"):
        load_splits(root)


def test_a_fifo_named_like_an_image_is_skipped_not_read(tmp_path, capsys):
    root = make_split(tmp_path / "d")
    os.mkfifo(root / "train" / "red" / "pipe.png")
    data = load_splits(root)  # reading the FIFO would block forever
    assert len(data.train) == 18
    assert f"{root / 'train' / 'red' / 'pipe.png'}: not a regular file; left out" in capsys.readouterr().err


def test_an_unfinished_split_is_refused(tmp_path):
    root = make_split(tmp_path / "d")
    (root / "split.csv.incomplete").write_text("path\n")
    with pytest.raises(UserError, match="did not finish; run it again with --force"):
        load_splits(root)


def cache_files(cache_dir):
    return sorted((cache_dir / "decoded_r256_c224").glob("*.npy"))


def test_corrupt_or_pickled_cache_entries_are_decoded_again_and_replaced(tmp_path):
    root, cache_dir = make_split(tmp_path / "d"), tmp_path / "cache"
    first = load_splits(root, cache_dir)
    files = cache_files(cache_dir)
    truncated, pickled, wrong_shape = files[:3]
    truncated.write_bytes(truncated.read_bytes()[:100])
    planted = tmp_path / "pwned"
    with open(pickled, "wb") as f:  # an object array: np.load would need allow_pickle to read it
        np.save(f, np.array([CreatesFile(planted)], dtype=object), allow_pickle=True)
    np.save(wrong_shape, np.zeros((3, 8, 8), dtype=np.uint8))
    second = load_splits(root, cache_dir)
    assert not planted.exists()
    for name, split in first.splits().items():
        assert torch.equal(split.inputs[:], second.splits()[name].inputs[:])
    for file in (truncated, pickled, wrong_shape):  # healed: the next load reads them as they should be
        assert np.load(file, allow_pickle=False).shape == (3, 224, 224)


def a_new_process(monkeypatch):
    """What a later run sees: only the disk cache, no entry checked yet."""
    monkeypatch.setattr(ArrayCache, "checked", set())


def in_memory(data):
    return {name: split.inputs[:] for name, split in data.splits().items()}  # read now: the files may change


def test_an_entry_whose_pixels_changed_is_decoded_again_with_one_warning(tmp_path, monkeypatch, capsys):
    root, cache_dir = make_split(tmp_path / "d"), tmp_path / "cache"
    first = load_splits(root, cache_dir)
    clean, entry = in_memory(first), first.train.inputs.sources[4]
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one pixel: same shape, same size, a valid .npy
    entry.write_bytes(bytes(data))
    a_new_process(monkeypatch)
    again = in_memory(load_splits(root, cache_dir))
    assert all(torch.equal(again[name], clean[name]) for name in clean)
    assert capsys.readouterr().err.count(f"{entry}: a damaged cache entry") == 1
    assert digest_matches(entry)  # replaced by the decoded image


def test_a_digest_is_checked_once_per_process_and_batches_read_each_image_in_one_read(tmp_path, monkeypatch):
    root, cache_dir = make_split(tmp_path / "d"), tmp_path / "cache"
    load_splits(root, cache_dir)
    a_new_process(monkeypatch)
    checked = []
    monkeypatch.setattr(common.cache, "digest_matches", lambda file: checked.append(file) or digest_matches(file))
    for _ in range(2):
        data = load_splits(root, cache_dir)
    monkeypatch.setattr(common.data, "read_mapped", lambda *args: pytest.fail("read_image fell back to np.load"))
    for split in data.splits().values():
        list(split.batches(4))
    assert sorted(checked) == cache_files(cache_dir)  # each entry hashed once: the first time it was read


def test_an_entry_written_before_entries_had_a_digest_is_rebuilt_quietly(tmp_path, monkeypatch, capsys):
    root, cache_dir = make_split(tmp_path / "d"), tmp_path / "cache"
    clean = in_memory(load_splits(root, cache_dir))
    for file in cache_files(cache_dir):  # as older code wrote them: np.save's bytes alone
        np.save(file, np.load(file))
    a_new_process(monkeypatch)
    again = in_memory(load_splits(root, cache_dir))
    assert all(torch.equal(again[name], clean[name]) for name in clean)
    assert all(digest_matches(file) for file in cache_files(cache_dir))
    assert capsys.readouterr().err == ""


def test_an_unwritable_cache_falls_back_to_memory_with_one_warning(tmp_path, capsys):
    root = make_split(tmp_path / "d")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    data = load_splits(root, blocked / "cache")
    assert len(data.train) == 18
    err = capsys.readouterr().err
    assert err.count("cannot write the cache") == 1 and "in memory only" in err
    assert torch.equal(data.test.inputs[:], load_splits(root, tmp_path / "cache").test.inputs[:])
    assert all(isinstance(source, np.ndarray) for source in data.test.inputs.sources)  # held in memory


def test_an_extreme_strip_is_cut_before_resizing_and_ordinary_images_are_untouched():
    import torchvision.transforms as T
    strip = Image.new("RGB", (1, 30000), (10, 200, 30))
    assert limit_aspect(strip).size == (1, 10)
    assert report_transform()(strip).shape == (3, 224, 224)  # in milliseconds and kilobytes, not 8 GB
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 700, 3), dtype=np.uint8))
    plain = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    assert torch.equal(report_transform()(photo), plain(photo))


def test_a_fifo_in_the_cache_is_not_read(tmp_path):
    root, cache_dir = make_split(tmp_path / "d"), tmp_path / "cache"
    first = load_splits(root, cache_dir)
    entry = cache_files(cache_dir)[0]
    entry.unlink()
    os.mkfifo(entry)  # reading it would block forever
    assert torch.equal(load_splits(root, cache_dir).train.inputs[:], first.train.inputs[:])
    assert entry.is_file()  # replaced by the real entry


def test_a_class_folder_name_that_is_not_utf8_is_one_error(tmp_path):
    root = make_split(tmp_path / "d")
    for split in ("train", "validation", "test"):
        os.rename(os.fsencode(root / split / "red"), os.fsencode(root / split) + b"/\xfffox")
    with pytest.raises(UserError, match="not valid UTF-8; rename it"):
        load_splits(root)


def test_the_unwritable_cache_warning_comes_once_for_all_its_folders(tmp_path, capsys):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file")
    ArrayCache(blocked / "decoded").put("a", np.zeros(2))
    ArrayCache(blocked / "features").put("b", np.zeros(2))
    ArrayCache(blocked / "features").put("c", np.zeros(2))
    assert capsys.readouterr().err.count("cannot write the cache") == 1


def test_files_are_listed_in_image_folders_order(tmp_path):
    """The shared listing keeps ImageFolder's classes, labels and file order: earlier runs repeat exactly."""
    root = make_split(tmp_path / "d")
    for sub in ("a", "a b", "a/x", "b"):  # nested folders, whose order ImageFolder sorts by path
        make_image(root / "train" / "red" / sub / "0.png", (200, 0, 0), len(sub))
    data = load_splits(root)
    plain = ImageFolder(str(root / "train"))
    assert data.classes == plain.classes
    assert list(zip(data.train.paths, data.train.labels.tolist())) == plain.samples


def test_hidden_folders_and_files_are_never_classes_or_images(tmp_path):
    root = make_split(tmp_path / "d")
    for split in ("train", "validation", "test"):  # Jupyter leaves one in every folder it opens
        make_image(root / split / ".ipynb_checkpoints" / "0-checkpoint.png", (0, 0, 0), 1)
    make_image(root / "train" / "red" / ".ipynb_checkpoints" / "0-checkpoint.png", (0, 0, 0), 2)
    make_image(root / "train" / "red" / "._0.png", (0, 0, 0), 3)  # macOS leaves these on other file systems
    data = load_splits(root)
    assert data.classes == ["blue", "green", "red"] and len(data.train) == 18


def test_a_class_without_training_images_is_refused_naming_it(tmp_path):
    root = make_split(tmp_path / "d")
    for image in (root / "train" / "green").iterdir():
        image.unlink()
    with pytest.raises(UserError, match=r"train holds no readable image of the class\(es\) green: "):
        load_splits(root)


@pytest.mark.parametrize("links, named", [
    ({"purple": "{split}/red"}, ("purple", "red")),  # another class folder
    ({"purple": "{split}/red/deep"}, ("purple", "red")),  # into one
    ({"purple": "{outside}/red", "pink": "{outside}/red"}, ("pink", "purple")),  # one folder as two classes
])
def test_a_class_folder_link_that_doubles_images_is_refused(tmp_path, links, named):
    root = make_split(tmp_path / "d")
    outside = make_split(tmp_path / "outside")
    for split in ("train", "validation", "test"):
        make_image(root / split / "red" / "deep" / "0.png", (200, 0, 0), 9)
        for name, target in links.items():
            (root / split / name).symlink_to(target.format(split=root / split, outside=outside / split))
    link, shared = named
    with pytest.raises(UserError, match=f"class folder {root / 'train' / link} links to images of the class folder "
                                        f"{shared} too: they would count in two classes"):
        load_splits(root)


def test_folder_links_inside_a_class_folder_are_not_followed_so_never_loop(tmp_path, capsys):
    root = make_split(tmp_path / "d")
    for name in ("l1", "l2"):  # each leads back to its class folder: followed, the listing never ends
        (root / "train" / "red" / name).symlink_to(".")
    loaded = []
    thread = threading.Thread(target=lambda: loaded.append(load_splits(root)), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "listing the images did not finish"
    assert len(loaded[0].train) == 18
    err = capsys.readouterr().err
    assert f"{root / 'train' / 'red' / 'l1'}: a link to a folder; not followed" in err


def test_a_gif_is_an_image_like_the_others(tmp_path):
    root = make_split(tmp_path / "d")
    Image.new("P", (30, 20), 3).save(root / "train" / "red" / "palette.gif")
    data = load_splits(root)
    assert len(data.train) == 19 and any(p.endswith("palette.gif") for p in data.train.paths)


@pytest.mark.parametrize("where", ["in a class folder", "the split folder itself"])
def test_a_cache_inside_the_data_is_refused_before_anything_is_written(tmp_path, where):
    root = make_split(tmp_path / "d")
    cache = {"in a class folder": root / "train" / "red" / "cache", "the split folder itself": root}[where]
    before = sorted(root.rglob("*"))
    with pytest.raises(UserError, match=f"the cache folder {cache} is inside {root}, which this run reads"):
        load_splits(root, cache)
    assert sorted(root.rglob("*")) == before
