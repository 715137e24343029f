"""common/folds.py and data_split.py --folds: every image tested exactly once, stratified folds in the
report's proportions, each fold an ordinary split, folds.csv written last, fold_folders' consistency
checks, --force over a previous fold set, and bad input."""
import csv
from collections import Counter

import pytest

import common.folds as folding
import common.split as splitting
import data_split as ds
from common.cli import UserError
from common.cub import CUB_CLASSES
from common.data import load_splits
from test_cub import make_cub
from test_data_split import cli_error, files_under, interrupt_after, make_dataset, read_manifest, sha256, snapshot

SEVEN_BY_TEN = {f"class{c}": 10 for c in range(7)}  # the report's 7 classes, small
UNEVEN = {"a": 20, "b": 11, "c": 7}


def read_folds(dest):
    with open(dest / "folds.csv", newline="") as f:
        return list(csv.DictReader(f))


def make_folds(src, dest, *options):
    ds.main([str(src), str(dest), *map(str, options)])
    return folding.fold_folders(dest)


def split_of(folder):
    """{split: Counter(class)} of a fold's split.csv."""
    counts = {split: Counter() for split in splitting.SPLITS}
    for row in read_manifest(folder):
        counts[row["split"]][row["class"]] += 1
    return counts


@pytest.fixture
def seven(tmp_path):
    return make_dataset(tmp_path / "src", SEVEN_BY_TEN)


@pytest.fixture
def uneven(tmp_path):
    return make_dataset(tmp_path / "src", UNEVEN)


# -----------------------------------------------------------------------------
# the folds themselves

def test_every_image_is_a_test_image_exactly_once(seven, tmp_path):
    dest = tmp_path / "dest"
    folders = make_folds(seven, dest, "--folds", 5)
    assert folders == [dest / f"fold{i}" for i in range(5)]
    tested = Counter(row["source"] for folder in folders for row in read_manifest(folder) if row["split"] == "test")
    assert set(tested.values()) == {1} and set(tested) == files_under(seven)
    table = read_folds(dest)
    assert list(table[0]) == ["source", "class", "sha256", "fold", "k", "seed"]
    assert [row["source"] for row in table] == sorted(files_under(seven))
    assert {(row["k"], row["seed"]) for row in table} == {("5", "0")}
    for i, folder in enumerate(folders):
        assert {r["source"] for r in read_manifest(folder) if r["split"] == "test"} == \
               {r["source"] for r in table if r["fold"] == str(i)}


def test_each_fold_is_a_split_folder_with_disjoint_splits(uneven, tmp_path):
    dest = tmp_path / "dest"
    for folder in make_folds(uneven, dest, "--folds", 3):
        rows = read_manifest(folder)
        assert len(rows) == len({row["source"] for row in rows}) == sum(UNEVEN.values())  # disjoint, complete
        assert files_under(folder) == {row["path"] for row in rows} | {"split.csv"}
        for split in splitting.SPLITS:
            assert sorted(p.name for p in (folder / split).iterdir()) == sorted(UNEVEN)
        for row in rows:
            assert row["path"] == f"{row['split']}/{row['source']}"
            assert row["sha256"] == sha256(folder / row["path"]) == sha256(uneven / row["source"])
    in_folds = {f"fold{i}/{path}" for i in range(3) for path in files_under(dest / f"fold{i}")}
    assert files_under(dest) == {"folds.csv", *in_folds}


@pytest.mark.parametrize("folds", [2, 3, 7])
def test_folds_are_stratified(uneven, tmp_path, folds):
    tests = [split_of(folder)["test"] for folder in make_folds(uneven, tmp_path / "dest", "--folds", folds)]
    for name, n in UNEVEN.items():
        per_fold = [test[name] for test in tests]
        assert sum(per_fold) == n and max(per_fold) - min(per_fold) <= 1 and min(per_fold) >= 1, (name, per_fold)


def test_five_folds_are_70_10_20_percent(seven, tmp_path):
    for folder in make_folds(seven, tmp_path / "dest", "--folds", 5):
        counts = split_of(folder)
        assert [sum(counts[split].values()) for split in splitting.SPLITS] == [49, 7, 14]
        assert all(counts["validation"][name] == 1 and counts["test"][name] == 2 for name in SEVEN_BY_TEN)


@pytest.mark.parametrize("folds", [2, 3, 10])
def test_validation_is_a_tenth_of_each_class_within_rounding(tmp_path, folds):
    sizes = {"a": 40, "b": 23, "c": 10}
    for folder in make_folds(make_dataset(tmp_path / "src", sizes), tmp_path / "dest", "--folds", folds):
        counts = split_of(folder)
        for name, n in sizes.items():
            assert abs(counts["validation"][name] - n / 10) <= 1, (name, counts)
            assert counts["test"][name] in (n // folds, -(-n // folds)) and counts["train"][name] >= 1


def test_same_seed_same_folds_another_seed_others(tmp_path):
    first = make_dataset(tmp_path / "first", UNEVEN)
    second = make_dataset(tmp_path / "second", UNEVEN, reverse=True)
    runs = [make_folds(first, tmp_path / "d1", "--folds", 4),
            make_folds(second, tmp_path / "d2", "--folds", 4),
            make_folds(second, tmp_path / "d3", "--folds", 4, "--seed", 1)]
    manifests = [[read_manifest(folder) for folder in folders] for folders in runs]
    assert read_folds(tmp_path / "d1") == read_folds(tmp_path / "d2") and manifests[0] == manifests[1]
    assert [r["fold"] for r in read_folds(tmp_path / "d1")] != [r["fold"] for r in read_folds(tmp_path / "d3")]
    assert manifests[0] != manifests[2]


def test_a_fold_folder_loads_as_a_split(seven, tmp_path):
    data = load_splits(make_folds(seven, tmp_path / "dest", "--folds", 5)[0], cache_dir=tmp_path / "cache")
    assert len(data.classes) == 7 and (len(data.train.labels), len(data.test.labels)) == (49, 14)


def test_folds_of_the_cub_classes(tmp_path):
    ds.main(["--cub", str(make_cub(tmp_path / "cub")), str(tmp_path / "dest"), "--folds", "3"])
    folders = folding.fold_folders(tmp_path / "dest")
    assert len(folders) == 3 and {row["class"] for row in read_folds(tmp_path / "dest")} == set(CUB_CLASSES)


def test_one_fold_is_the_single_split(uneven, tmp_path):
    ds.main([str(uneven), str(tmp_path / "one"), "--folds", "1", "--ratios", "0.7", "0.1", "0.2"])
    ds.main([str(uneven), str(tmp_path / "plain"), "--ratios", "0.7", "0.1", "0.2"])
    assert read_manifest(tmp_path / "one") == read_manifest(tmp_path / "plain")
    with pytest.raises(UserError, match="--folds 1 is a single split"):
        folding.split_folds(uneven, tmp_path / "api", 1)
    assert not (tmp_path / "api").exists()


def test_dry_run_writes_nothing(seven, tmp_path, capsys):
    counts = folding.split_folds(seven, tmp_path / "dest", 5, dry_run=True)
    assert not (tmp_path / "dest").exists()
    assert len(counts) == 5 and counts[0]["class0"] == {"train": 7, "validation": 1, "test": 2}
    out = capsys.readouterr().out
    assert "dry run: nothing written" in out and "fold4" in out and "5 stratified folds of 70 images" in out


# -----------------------------------------------------------------------------
# fold_folders: a complete, consistent fold set or one error line

REMEDY = "make the folds again with data_split.py SRC DEST --folds K --force"


def test_a_fold_set_without_folds_csv_is_refused(seven, tmp_path):
    dest = tmp_path / "dest"
    make_folds(seven, dest, "--folds", 5)
    (dest / "folds.csv").unlink()
    with pytest.raises(UserError, match=f"folds.csv is missing: the folds there are unfinished.*; {REMEDY}"):
        folding.fold_folders(dest)


def test_an_interrupted_fold_set_is_unfinished_and_force_completes_it(seven, tmp_path, monkeypatch):
    dest = tmp_path / "dest"
    real_place = interrupt_after(150, monkeypatch)  # in the third fold
    with pytest.raises(KeyboardInterrupt):
        ds.main([str(seven), str(dest), "--folds", "5"])
    assert (dest / "fold1" / "split.csv").exists() and (dest / "fold2" / "split.csv.incomplete").exists()
    assert not (dest / "folds.csv").exists() and (dest / "folds.csv.incomplete").exists()
    with pytest.raises(UserError, match="folds.csv is missing"):
        folding.fold_folders(dest)
    monkeypatch.setattr(splitting, "place", real_place)
    ds.main([str(seven), str(dest), "--folds", "5", "--force"])
    make_folds(seven, tmp_path / "clean", "--folds", 5)
    assert read_folds(dest) == read_folds(tmp_path / "clean")
    assert files_under(dest) == files_under(tmp_path / "clean")


def move_a_test_row_to_train(manifest):
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["split"] == "test")
    row.update(split="train", path=f"train/{row['source']}")
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_an_edited_fold_is_refused(seven, tmp_path):
    dest = tmp_path / "dest"
    make_folds(seven, dest, "--folds", 5)
    move_a_test_row_to_train(dest / "fold3" / "split.csv")
    with pytest.raises(UserError, match=f"fold3/split.csv: its test images are not fold 3 of folds.csv: it was "
                                        f"edited or is from another split: {REMEDY}"):
        folding.fold_folders(dest)


@pytest.mark.parametrize("edit", ["missing fold", "unfinished fold", "fold of another split", "folds.csv edited",
                                  "folds.csv damaged"])
def test_an_inconsistent_fold_set_is_refused(seven, tmp_path, edit):
    dest = tmp_path / "dest"
    make_folds(seven, dest, "--folds", 5)
    if edit == "missing fold":
        (dest / "fold2").rename(tmp_path / "elsewhere")
    elif edit == "unfinished fold":
        (dest / "fold2" / "split.csv").rename(dest / "fold2" / "split.csv.incomplete")
    elif edit == "fold of another split":
        make_folds(make_dataset(tmp_path / "other_src", UNEVEN), tmp_path / "other", "--folds", 5)
        (dest / "fold2" / "split.csv").write_bytes((tmp_path / "other" / "fold2" / "split.csv").read_bytes())
    elif edit == "folds.csv edited":
        text = (dest / "folds.csv").read_text()
        (dest / "folds.csv").write_text(text.replace(",0,5,0\n", ",7,5,0\n", 1))
    else:
        (dest / "folds.csv").write_text("not,a,fold,list\n")
    with pytest.raises(UserError, match=REMEDY) as error:
        folding.fold_folders(dest)
    assert "\n" not in str(error.value)


# -----------------------------------------------------------------------------
# DEST: --force replaces only a previous fold set's files

def test_force_replaces_a_previous_fold_set(seven, tmp_path, capsys):
    dest = tmp_path / "dest"
    make_folds(seven, dest, "--folds", 5)
    (dest / "notes.txt").write_text("mine")
    (dest / "fold4" / "train" / "mine.txt").write_text("also mine")
    with pytest.raises(UserError, match="not empty; use --force to replace folds written there before"):
        ds.main([str(seven), str(dest), "--folds", "3"])
    folders = make_folds(seven, dest, "--folds", 3, "--seed", 1, "--force")
    assert len(folders) == 3 and {row["seed"] for row in read_folds(dest)} == {"1"}
    written = {"folds.csv", *(f"fold{i}/{p}" for i in range(3) for p in files_under(dest / f"fold{i}"))}
    assert files_under(dest) == written | {"notes.txt", "fold4/train/mine.txt"}
    assert sorted(p.name for p in dest.iterdir()) == ["fold0", "fold1", "fold2", "fold4", "folds.csv", "notes.txt"]
    assert "kept 2 files" in capsys.readouterr().out


def test_force_refuses_to_mix_folds_and_a_single_split(seven, tmp_path):
    ds.main([str(seven), str(tmp_path / "single")])
    before = snapshot(tmp_path / "single")
    with pytest.raises(UserError, match="holds no folds.csv: --force replaces only folds that data_split.py wrote"):
        ds.main([str(seven), str(tmp_path / "single"), "--folds", "5", "--force"])
    make_folds(seven, tmp_path / "folds", "--folds", 5)
    with pytest.raises(UserError, match="holds no split.csv: --force replaces only a split that data_split.py wrote"):
        ds.main([str(seven), str(tmp_path / "folds"), "--force"])
    assert snapshot(tmp_path / "single") == before


def test_force_refuses_a_fold_folder_that_links_elsewhere(seven, tmp_path):
    dest = tmp_path / "dest"
    make_folds(seven, dest, "--folds", 3)
    mine = make_dataset(tmp_path / "mine", {"x": 2})
    (dest / "fold7").symlink_to(mine)
    with pytest.raises(UserError, match="fold7 is a link or a file, not a fold folder data_split.py made"):
        ds.main([str(seven), str(dest), "--folds", "3", "--force"])
    assert files_under(mine) == {"x/img_000.png", "x/img_001.png"}


# -----------------------------------------------------------------------------
# bad input: one `error:` line, exit code 2, nothing written

BAD_INPUTS = {
    "no folds": (["--folds", "0"], "--folds must be a whole number from 1 (a single split) to 100, got 0"),
    "negative folds": (["--folds", "-1"], "--folds must be a whole number from 1 (a single split) to 100, got -1"),
    "too many folds": (["--folds", "101"], "--folds must be a whole number from 1 (a single split) to 100, got 101"),
    "a class smaller than K": (["--folds", "8"], "class c has 7 images, fewer than --folds 8: each fold needs a test "
                                                 "image of every class; give --folds 7 or fewer, or add images"),
    "folds with ratios": (["--folds", "5", "--ratios", "0.7", "0.1", "0.2"],
                          "--folds and --ratios do not go together: the folds fix the proportions"),
    "a seed scikit-learn refuses": (["--folds", "5", "--seed", "-1"],
                                    "--seed must be from 0 to 4294967295 with --folds"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line(case, uneven, tmp_path, capsys):
    options, message = BAD_INPUTS[case]
    before = snapshot(tmp_path)
    code, out, err = cli_error([uneven, tmp_path / "dest", *options], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"error: {message}"), err
    assert snapshot(tmp_path) == before


def test_a_class_of_one_image_suggests_a_single_split(tmp_path):
    src = make_dataset(tmp_path / "src", {"a": 5, "lonely": 1})
    with pytest.raises(UserError, match="class lonely has 1 images, fewer than --folds 2: .*; split without --folds"):
        folding.split_folds(src, tmp_path / "dest", 2)
    assert not (tmp_path / "dest").exists()
