"""data_split.py and common/split.py: layout, manifest, determinism, safety of SRC and DEST, and bad input
(the manifest's own checks: test_manifest.py; the CUB paths: test_cub.py)."""
import csv
import hashlib
import io
import os
import subprocess
import sys

import pytest
from PIL import Image

import common.split as splitting
import data_split as ds
from common.cli import UserError
from common.paths import DEMO_IMAGES
from conftest import REPO, exit_code_and_output


def make_image(path, index=0, mode="RGB"):
    """A tiny image whose content depends on index, so every file hashes differently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": (index % 256, index // 256, 99), "L": index % 256}.get(mode)
    Image.new(mode, (8, 8), colour).save(path)
    return path


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


def make_dataset(root, sizes, reverse=False):
    """root/<class>/img_NNN.png for {class: count}; `reverse` creates the same files in the opposite order."""
    files = [(name, i) for name, count in sizes.items() for i in range(count)]
    for name, i in reversed(files) if reverse else files:
        make_image(root / name / f"img_{i:03d}.png", index=i + 100 * len(name))
    return root


def read_manifest(dest):
    with open(dest / "split.csv", newline="") as f:
        return list(csv.DictReader(f))


def files_under(root):
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}


def snapshot(root):
    """Names, bytes and modification times of everything under root."""
    return {p.relative_to(root).as_posix(): (p.is_dir() or p.read_bytes(), p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def src(tmp_path):
    return make_dataset(tmp_path / "src", {"a": 20, "b": 10, "c": 7})


# -----------------------------------------------------------------------------
# the split itself

def test_layout_and_manifest(src, tmp_path):
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    rows = read_manifest(dest)
    assert list(rows[0]) == ["path", "source", "class", "split", "sha256"]
    for split in splitting.SPLITS:
        assert sorted(p.name for p in (dest / split).iterdir()) == ["a", "b", "c"]
    sources = [row["source"] for row in rows]
    assert sorted(sources) == sorted(files_under(src))  # every image in exactly one split
    assert files_under(dest) == {row["path"] for row in rows} | {"split.csv"}
    for row in rows:
        assert row["path"] == f"{row['split']}/{row['source']}" and row["source"].startswith(row["class"] + "/")
        assert row["sha256"] == sha256(dest / row["path"]) == sha256(src / row["source"])


def test_counts_are_stratified(src, tmp_path, capsys):
    counts = splitting.split_dataset(src, tmp_path / "dest", ratios=(0.6, 0.2, 0.2))
    assert counts == {"a": {"train": 12, "validation": 4, "test": 4},
                      "b": {"train": 6, "validation": 2, "test": 2},
                      "c": {"train": 5, "validation": 1, "test": 1}}
    rows = read_manifest(tmp_path / "dest")
    for name, per_split in counts.items():
        for split, count in per_split.items():
            assert sum(r["class"] == name and r["split"] == split for r in rows) == count
    table = capsys.readouterr().out
    assert "total" in table and " 37" in table


@pytest.mark.parametrize("ratios", [(0.7, 0.2, 0.1), (0.7, 0.1, 0.2), (0, 0.5, 0.5), (0.5, 0.5, 0), (1, 0, 0),
                                    (0.34, 0.33, 0.33), (0.1, 0.0, 0.9)])
def test_split_counts_properties(ratios):
    nonzero = sum(r > 0 for r in ratios)
    for n in range(80):
        counts = splitting.split_counts(n, ratios)
        assert sum(counts) == n and min(counts) >= 0, (n, counts)
        assert all(c == 0 for c, r in zip(counts, ratios) if r == 0), (n, counts)
        if n >= nonzero:
            assert all(c >= 1 for c, r in zip(counts, ratios) if r > 0), (n, counts)
        if n >= 20:  # past the one-image-each fix-ups, rounding moves each count by at most one image
            assert all(abs(c - n * r) <= 1 for c, r in zip(counts, ratios)), (n, counts)


def test_report_split_of_417_images(tmp_path):
    """The report's code split its 417 CUB images 291 / 42 / 84 with 0.7 0.1 0.2."""
    sizes = dict(zip("abcdefg", (60, 60, 60, 60, 59, 59, 59)))
    counts = splitting.split_dataset(make_dataset(tmp_path / "src", sizes), tmp_path / "dest", ratios=(0.7, 0.1, 0.2),
                              dry_run=True)
    totals = [sum(c[split] for c in counts.values()) for split in splitting.SPLITS]
    assert totals == [291, 42, 84]
    assert all(splitting.split_counts(n, (0.7, 0.1, 0.2))[1:] == [6, 12] for n in range(58, 63))


def test_same_seed_same_split_whatever_the_file_order(tmp_path, monkeypatch):
    sizes = {"x": 15, "y": 12}
    first = make_dataset(tmp_path / "first", sizes)
    second = make_dataset(tmp_path / "second", sizes, reverse=True)
    ds.main([str(first), str(tmp_path / "d1")])
    walk = os.walk
    # another file system lists a folder in another order
    monkeypatch.setattr(splitting.os, "walk", lambda top: ((root, dirs, files[::-1]) for root, dirs, files in walk(top)))
    ds.main([str(second), str(tmp_path / "d2")])
    ds.main([str(second), str(tmp_path / "d3"), "--seed", "1"])
    assert read_manifest(tmp_path / "d1") == read_manifest(tmp_path / "d2")
    assert read_manifest(tmp_path / "d1") != read_manifest(tmp_path / "d3")


# -----------------------------------------------------------------------------
# SRC stays untouched, DEST is replaced only where it is ours

def test_src_untouched_by_copy_link_and_force(src, tmp_path, monkeypatch):
    before = snapshot(src)
    for options in ([], ["--link"]):
        dest = tmp_path / f"dest{len(options)}"
        ds.main([str(src), str(dest), *options])
        ds.main([str(src), str(dest), *options, "--force", "--seed", "7"])
    monkeypatch.setattr(splitting.os, "link", lambda *a: (_ for _ in ()).throw(OSError("cross-device link")))
    ds.main([str(src), str(tmp_path / "symlinked"), "--link"])
    ds.main([str(src), str(tmp_path / "symlinked"), "--link", "--force", "--seed", "3"])
    assert snapshot(src) == before


def test_link_makes_hard_links(src, tmp_path):
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest), "--link"])
    for row in read_manifest(dest):
        target = dest / row["path"]
        assert not target.is_symlink() and os.path.samefile(target, src / row["source"])


def test_link_falls_back_to_symlinks(src, tmp_path, monkeypatch, capsys):
    def no_hard_links(*args):
        raise OSError("Invalid cross-device link")
    monkeypatch.setattr(splitting.os, "link", no_hard_links)
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest), "--link"])
    rows = read_manifest(dest)
    assert all((dest / r["path"]).is_symlink() and (dest / r["path"]).resolve() == (src / r["source"]).resolve()
               for r in rows)
    assert f"hard links failed for {len(rows)} files" in capsys.readouterr().err


def test_force_replaces_only_manifest_files(src, tmp_path, capsys):
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    (dest / "notes.txt").write_text("mine")
    (dest / "train" / "a" / "mine.txt").write_text("also mine")
    with pytest.raises(UserError, match="not empty"):
        ds.main([str(src), str(dest), "--seed", "1"])
    ds.main([str(src), str(dest), "--seed", "1", "--force"])
    rows = read_manifest(dest)
    assert files_under(dest) == {r["path"] for r in rows} | {"split.csv", "notes.txt", "train/a/mine.txt"}
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "train/a/mine.txt").read_text() == "also mine"
    assert "kept 2 files" in capsys.readouterr().out


def test_force_refuses_an_unlisted_image_in_a_split_folder(src, tmp_path):
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    mine = dest / "train" / "a" / "mine.png"
    mine.write_bytes((src / "a" / "img_000.png").read_bytes())
    with pytest.raises(UserError, match="mine.png is an image no previous manifest lists"):
        ds.main([str(src), str(dest), "--seed", "1", "--force"])
    assert mine.exists() and read_manifest(dest)  # the split there is untouched


def test_force_drops_class_folders_of_the_old_split(src, tmp_path):
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    fewer = make_dataset(tmp_path / "fewer", {"a": 5, "b": 5})
    ds.main([str(fewer), str(dest), "--force"])
    for split in splitting.SPLITS:  # ImageFolder would take a leftover empty folder for a class
        assert sorted(p.name for p in (dest / split).iterdir()) == ["a", "b"]


def test_force_refuses_to_overwrite_unlisted_files(src, tmp_path):
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    (dest / "split.csv").unlink()  # the images are now the user's files
    before = snapshot(dest)
    with pytest.raises(UserError, match="holds no split.csv: --force replaces only a split that data_split.py wrote"):
        ds.main([str(src), str(dest), "--force"])
    assert snapshot(dest) == before


def test_dry_run_writes_nothing(src, tmp_path, capsys):
    dest = tmp_path / "dest"
    counts = splitting.split_dataset(src, dest, dry_run=True)
    assert not dest.exists()
    out = capsys.readouterr().out
    assert "dry run" in out and all(name in out for name in counts)


# -----------------------------------------------------------------------------
# what gets read

def test_skips_non_images_hidden_and_broken_files(src, tmp_path, capsys):
    noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG")
    (src / "a" / "notes.txt").write_text("not an image")
    make_image(src / "a" / ".hidden.png")
    make_image(src / "a" / ".ipynb_checkpoints" / "img_000.png")
    (src / "a" / "empty.jpg").write_bytes(b"")
    (src / "b" / "truncated.JPG").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    (src / "c" / "garbage.png").write_bytes(b"\x89PNG this is not really one")
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    err = capsys.readouterr().err
    for name in ("empty.jpg: cannot be read as an image (empty file)", "truncated.JPG", "garbage.png"):
        assert any(line.startswith("warning:") and name in line for line in err.splitlines()), name
    assert "skipped 1 non-image files" in err
    assert {r["source"] for r in read_manifest(dest)} == {f"{n}/img_{i:03d}.png" for n, k in
                                                          {"a": 20, "b": 10, "c": 7}.items() for i in range(k)}


def test_small_class_warning(tmp_path, capsys):
    splitting.split_dataset(make_dataset(tmp_path / "src", {"big": 10, "tiny": 2, "three": 3}), tmp_path / "d", dry_run=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "tiny" in warnings[0] and "test" in warnings[0]


def test_unusual_image_modes_are_accepted(tmp_path):
    src = make_dataset(tmp_path / "src", {"plain": 4})
    odd = src / "odd"
    make_image(odd / "gray.jpg", mode="L")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(odd / "rgba.png")
    Image.new("P", (8, 8), 3).save(odd / "palette.png")
    Image.new("I;16", (8, 8), 40000).save(odd / "sixteen.png")
    Image.new("CMYK", (8, 8), (0, 128, 255, 0)).save(odd / "cmyk.jpg")
    counts = splitting.split_dataset(src, tmp_path / "dest")
    assert sum(counts["odd"].values()) == 5


# -----------------------------------------------------------------------------
# bad input: one `error:` line, exit code 2

def cli_error(argv, capsys):
    return exit_code_and_output(lambda: ds.main([str(a) for a in argv]), capsys)


BAD_INPUTS = {
    "src missing": lambda src, tmp: [tmp / "nowhere", tmp / "dest"],
    "src empty": lambda src, tmp: [touch(tmp / "empty" / ".hidden").parent, tmp / "dest"],
    "no class folders": lambda src, tmp: [make_image(tmp / "flat" / "x.png").parent, tmp / "dest"],
    "one class": lambda src, tmp: [make_dataset(tmp / "one", {"a": 5}), tmp / "dest"],
    "negative ratio": lambda src, tmp: [src, tmp / "dest", "--ratios", "-0.1", "0.6", "0.5"],
    "ratios not summing to 1": lambda src, tmp: [src, tmp / "dest", "--ratios", "0.5", "0.2", "0.1"],
    "two ratios": lambda src, tmp: [src, tmp / "dest", "--ratios", "0.8", "0.2"],
    "dest inside src": lambda src, tmp: [src, src / "a" / "split"],
    "src inside dest": lambda src, tmp: [src, tmp, "--force"],
    "dest unwritable": lambda src, tmp: [src, touch(tmp / "file") / "dest"],
    "dest not empty": lambda src, tmp: [src, touch(tmp / "full" / "x").parent],
    "only one path": lambda src, tmp: [src],
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line(case, src, tmp_path, capsys):
    before = snapshot(tmp_path)
    code, out, err = cli_error(BAD_INPUTS[case](src, tmp_path), capsys)
    assert code == 2 and out == ""  # refused before reading any image
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert all(path in snapshot(tmp_path) for path in before)  # nothing removed


@pytest.mark.slow
def test_script_in_fresh_processes(src, tmp_path):
    """Bad input gives one line and exit code 2; another PYTHONHASHSEED splits the same way.

    Both processes run at once: each pays seconds of imports.
    """
    script = [sys.executable, str(REPO / "data_split.py")]
    bad = subprocess.Popen([*script, str(tmp_path / "nowhere"), str(tmp_path / "bad")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    good = subprocess.Popen([*script, str(src), str(tmp_path / "other")], env=dict(os.environ, PYTHONHASHSEED="12345"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, bad_err = bad.communicate()
    _, good_err = good.communicate()
    assert bad.returncode == 2 and bad_err.startswith("error: ") and len(bad_err.splitlines()) == 1
    assert "Traceback" not in bad_err and not (tmp_path / "bad").exists()
    assert good.returncode == 0, good_err
    ds.main([str(src), str(tmp_path / "here")])
    assert read_manifest(tmp_path / "other") == read_manifest(tmp_path / "here")


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        ds.main(["--help"])
    out = capsys.readouterr().out
    for option in ("--ratios", "--folds", "--seed", "--link", "--force", "--dry-run", "--cub", "--work"):
        assert option in out
    assert "python data_split.py --cub CUB_200_2011.tgz" in out and "data/demo_split" in out
    assert "python data_split.py SRC DEST --folds 5" in out


def test_a_class_folder_linking_to_src_is_refused(src, tmp_path):
    (src / "everything").symlink_to(src)
    with pytest.raises(UserError, match="links to .* or a folder above it"):
        ds.main([str(src), str(tmp_path / "dest")])
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("target", ["a", "a/deep"])
def test_a_class_folder_linking_to_another_class_is_refused(src, tmp_path, target):
    make_image(src / "a" / "deep" / "img_000.png", 999)
    (src / "d").symlink_to(src / target)  # class d: a's images a second time
    with pytest.raises(UserError, match=r"class folder .*/src/d links to images of the class folder a too"):
        ds.main([str(src), str(tmp_path / "dest")])
    assert not (tmp_path / "dest").exists()


def test_folder_links_inside_a_class_are_named_and_not_followed(src, tmp_path, capsys):
    (src / "a" / "again").symlink_to(".")  # followed, it would list a's images again and again
    ds.main([str(src), str(tmp_path / "dest")])
    assert f"{src / 'a' / 'again'}: a link to a folder; not followed" in capsys.readouterr().err
    assert len(read_manifest(tmp_path / "dest")) == 37


def test_a_gif_is_split_like_any_image(src, tmp_path):
    Image.new("P", (8, 8), 5).save(src / "a" / "palette.gif")
    ds.main([str(src), str(tmp_path / "dest")])
    assert "a/palette.gif" in {row["source"] for row in read_manifest(tmp_path / "dest")}


@pytest.mark.slow
def test_a_fifo_named_like_an_image_is_skipped_not_read(src, tmp_path):
    os.mkfifo(src / "a" / "pipe.png")
    done = subprocess.run([sys.executable, str(REPO / "data_split.py"), str(src), str(tmp_path / "dest")],
                          capture_output=True, text=True, timeout=120)  # reading the FIFO would hang
    assert done.returncode == 0, done.stderr
    assert "pipe.png: not a regular file; left out" in done.stderr
    assert len(read_manifest(tmp_path / "dest")) == 37


def interrupt_after(n, monkeypatch):
    """Make data_split stop as Ctrl-C would after placing n files; returns the real place()."""
    real_place, placed = splitting.place, []

    def place(source, target, link):
        if len(placed) == n:
            raise KeyboardInterrupt
        placed.append(target)
        return real_place(source, target, link)

    monkeypatch.setattr(splitting, "place", place)
    return real_place


def test_an_interrupted_split_is_unfinished_and_force_completes_it(src, tmp_path, monkeypatch):
    dest = tmp_path / "dest"
    real_place = interrupt_after(5, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        ds.main([str(src), str(dest)])
    assert not (dest / "split.csv").exists() and (dest / "split.csv.incomplete").exists()
    monkeypatch.setattr(splitting, "place", real_place)
    with pytest.raises(UserError, match="not empty; use --force"):
        ds.main([str(src), str(dest)])
    ds.main([str(src), str(dest), "--force"])  # cleans up what the interrupted run left, then splits
    ds.main([str(src), str(tmp_path / "clean")])
    assert read_manifest(dest) == read_manifest(tmp_path / "clean")
    assert files_under(dest) == files_under(tmp_path / "clean")


def test_force_re_split_interrupted_keeps_the_old_paths_cleanable(src, tmp_path, monkeypatch):
    dest, real_place = tmp_path / "dest", splitting.place
    ds.main([str(src), str(dest), "--ratios", "0.5", "0.25", "0.25"])
    monkeypatch.setattr(splitting, "place", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        ds.main([str(src), str(dest), "--force"])
    assert not (dest / "split.csv").exists()
    monkeypatch.setattr(splitting, "place", real_place)
    ds.main([str(src), str(dest), "--force"])
    ds.main([str(src), str(tmp_path / "clean")])
    assert files_under(dest) == files_under(tmp_path / "clean")


def test_a_dest_in_use_by_another_split_is_refused(src, tmp_path):
    from common.run_folder import lock
    dest = tmp_path / "dest"
    dest.mkdir()
    with lock(dest, "DEST"):
        with pytest.raises(UserError, match="DEST .* is in use by another run"):
            ds.main([str(src), str(dest)])
    assert list(dest.iterdir()) == []
    ds.main([str(src), str(dest)])  # free again
    assert len(read_manifest(dest)) == 37


# -----------------------------------------------------------------------------

@pytest.mark.skipif(not DEMO_IMAGES.is_dir(), reason="demo set not built")
def test_demo_set_dry_run(tmp_path):
    counts = splitting.split_dataset(DEMO_IMAGES, tmp_path / "dest", dry_run=True)
    assert len(counts) == 7 and not (tmp_path / "dest").exists()
    assert sum(sum(c.values()) for c in counts.values()) == len(list(DEMO_IMAGES.rglob("*.jpg")))


def test_force_refuses_a_folder_that_is_not_a_split(src, tmp_path, capsys):
    photos = make_dataset(tmp_path / "photos", {"holiday": 3})
    (photos / "notes.txt").write_text("mine")
    before = snapshot(photos)
    code, out, err = cli_error([src, photos, "--force"], capsys)
    assert code == 2 and err == f"error: {photos} is not empty and holds no split.csv: --force replaces only a split " \
                                "that data_split.py wrote; pick a new or empty DEST\n"
    assert snapshot(photos) == before  # before: 37 images and a manifest added to the user's folder
