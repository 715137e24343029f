"""Stratified k-fold cross-validation splits; data_split.py --folds K is the command line over it.

DEST gets fold0/ ... fold{K-1}/, each an ordinary split folder (train/ validation/ test/ and its
split.csv, written by common/split.py), then DEST/folds.csv naming each image's fold. In fold i the
test images are fold i, so over the K folds every image is a test image exactly once; validation is
10 % of all images, drawn per class from the other folds; train is the rest. K = 5 gives 70 / 10 / 20 %,
the proportions of the report's code. SRC is only read.
"""
import os
import random
import re
from pathlib import Path

import numpy as np

from common.data import MANIFEST, SPLITS, UNFINISHED_MANIFEST
from common.errors import UserError, shown, warn
from common.manifest import manifest_rows, read_manifest, write_manifest
from common.split import (check_clashes, check_new_dest, class_rows, find_classes, in_split_order, read_images,
                          remove_old_split, report_kept, split_counts, write_split, writing_to)

# Each fold is a whole copy of the data set and, later, a training run of its own: 100 folds are already
# 100 copies and 100 runs, and more than a class has images is refused anyway. Beyond it is a typo.
MAX_FOLDS = 100
VALIDATION = 0.1  # of all images, in every fold, as the report's code had it
FOLDS = "folds.csv"  # written last: a DEST without it holds no complete fold set
UNFINISHED_FOLDS = "folds.csv.incomplete"  # marks DEST as folds of ours while they are written
FOLDS_COLUMNS = ["source", "class", "sha256", "fold", "k", "seed"]  # k and seed: how the folds were drawn
FOLD_FOLDER = re.compile(r"fold(0|[1-9][0-9]*)")


def fold_number(folder):
    """i where `folder` is fold i of a fold set (DEST/fold<i> beside DEST/folds.csv), else None."""
    match = FOLD_FOLDER.fullmatch(folder.name)
    return int(match[1]) if match and (folder.parent / FOLDS).is_file() else None


# -----------------------------------------------------------------------------
# drawing the folds

def check_folds(folds, seed):
    """--folds from 1 (a single split) to MAX_FOLDS; with folds, a seed that scikit-learn takes."""
    if not isinstance(folds, int) or not 1 <= folds <= MAX_FOLDS:
        raise UserError(f"--folds must be a whole number from 1 (a single split) to {MAX_FOLDS}, got {folds}")
    if folds > 1 and (not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise UserError(f"--seed must be from 0 to {2**32 - 1} with --folds (scikit-learn draws them), got {seed}")


def check_class_sizes(images, folds):
    """Every fold's test needs an image of every class, so every class needs K images."""
    name, items = min(images.items(), key=lambda item: len(item[1]))
    if len(items) < folds:
        fewer = f"give --folds {len(items)} or fewer" if len(items) > 1 else "split without --folds"
        raise UserError(f"class {shown(name)} has {len(items)} images, fewer than --folds {folds}: each fold needs "
                        f"a test image of every class; {fewer}, or add images")


def draw_folds(images, folds, seed):
    """folds.csv's rows: every image, sorted by source (not by listing order, which file systems differ
    in), with its fold from scikit-learn's StratifiedKFold."""
    from sklearn.model_selection import StratifiedKFold  # seconds to import; only folds need it
    items = sorted((source, name, digest) for name, pairs in images.items() for source, digest in pairs)
    labels = [name for _, name, _ in items]
    fold_of = {}
    drawn = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(items)), labels)
    for fold, (_, test) in enumerate(drawn):
        fold_of.update((index, fold) for index in test)
    return [{"source": source, "class": name, "sha256": digest, "fold": fold_of[i], "k": folds, "seed": seed}
            for i, (source, name, digest) in enumerate(items)]


def fold_split(table, names, fold, seed):
    """Fold `fold`'s manifest rows and {class: {split: n}}: test is the fold, validation 10 % of all
    images drawn per class from the other folds (shuffled with a str seed, as assign_splits does), train the rest."""
    share = VALIDATION / (1 - 1 / table[0]["k"])  # 10 % of all images is this share of the other folds'
    rows, counts = [], {}
    for name in names:
        mine = [row for row in table if row["class"] == name]
        test = [(row["source"], row["sha256"]) for row in mine if row["fold"] == fold]
        rest = [(row["source"], row["sha256"]) for row in mine if row["fold"] != fold]
        random.Random(f"{seed}:fold{fold}:{name}").shuffle(rest)
        train = split_counts(len(rest), (1 - share, share, 0))[0]
        parts = {"train": rest[:train], "validation": rest[train:], "test": test}
        counts[name] = {split: len(items) for split, items in parts.items()}
        rows += class_rows(name, parts)
    return in_split_order(rows), counts


def warn_small_classes(splits):
    """A class too small for a validation image in some folds: said once per class, as a single split says it."""
    for name in splits[0][1]:
        empty = [str(i) for i, (_, counts) in enumerate(splits) if counts[name]["validation"] == 0]
        if empty:
            warn(f"class {name} has only {sum(splits[0][1][name].values())} images: no validation image in "
                 f"fold {' '.join(empty)}")


def format_folds(splits, images, seed):
    lines = [f"{len(splits)} stratified folds of {images} images (seed {seed}); each image is a test image once",
             f"{'fold':<6}  {'train':>6}  {'validation':>10}  {'test':>6}"]
    for i, (_, counts) in enumerate(splits):
        total = {split: sum(c[split] for c in counts.values()) for split in SPLITS}
        lines.append(f"{f'fold{i}':<6}  {total['train']:>6}  {total['validation']:>10}  {total['test']:>6}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# DEST

def previous_folds(src, dest, force):
    """Refuse unsafe destinations as a single split does; fold folder name -> the paths its manifests
    list, for each fold folder of the folds data_split.py wrote in DEST before (--force replaces those only)."""
    if not check_new_dest(src, dest, force, (FOLDS, UNFINISHED_FOLDS), "folds"):
        return {}
    for marker in (dest / FOLDS, dest / UNFINISHED_FOLDS):
        if os.path.lexists(marker) and not marker.is_file():
            raise UserError(f"{marker} is not a regular file; move it away to use --force")
    old = {}
    for folder in sorted(p for p in dest.iterdir() if FOLD_FOLDER.fullmatch(p.name)):
        if folder.is_symlink() or not folder.is_dir():  # not made by us: writing there would reach elsewhere
            raise UserError(f"{folder} is a link or a file, not a fold folder data_split.py made; move it away")
        if any(os.path.lexists(folder / name) for name in (MANIFEST, UNFINISHED_MANIFEST)):
            old[folder.name] = read_manifest(folder)
    return old


def check_fold_clashes(dest, splits, old):
    for i, (rows, _) in enumerate(splits):
        check_clashes(dest / f"fold{i}", rows, old.get(f"fold{i}", set()))


def remove_fold(folder, old_paths):
    """A previous fold beyond the new K: the files its manifests list, then the manifests, then the
    split folders it made if left empty. Files of the user's stay."""
    remove_old_split(folder, old_paths)
    for name in (MANIFEST, UNFINISHED_MANIFEST):
        (folder / name).unlink(missing_ok=True)
    made = [path for split in SPLITS for path in [*sorted((folder / split).glob("*")), folder / split]]
    for path in [*made, folder]:
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


def write_folds(src, dest, table, splits, link, old):
    """folds.csv appears last, once every fold folder is complete; until then folds.csv.incomplete
    marks DEST as folds of ours, so that --force can finish an interrupted run."""
    write_manifest(dest / UNFINISHED_FOLDS, table, FOLDS_COLUMNS)
    (dest / FOLDS).unlink(missing_ok=True)
    for name in sorted(set(old) - {f"fold{i}" for i in range(len(splits))}):
        remove_fold(dest / name, old[name])
    for i, (rows, counts) in enumerate(splits):
        write_split(src, dest / f"fold{i}", rows, list(counts), link, old.get(f"fold{i}", set()))
    write_manifest(dest / FOLDS, table, FOLDS_COLUMNS)
    (dest / UNFINISHED_FOLDS).unlink()


def split_folds(src, dest, folds, seed=0, link=False, force=False, dry_run=False, classes=None):
    """K stratified cross-validation folds of SRC's class folders into DEST/fold0 ... DEST/fold{K-1}, then
    DEST/folds.csv; prints a summary per fold. Returns each fold's {class: {"train": n, "validation": n,
    "test": n}}. `classes` picks class folders by name. K = 1 is no k-fold: split_dataset makes that split."""
    src, dest = Path(src), Path(dest)
    check_folds(folds, seed)
    if folds == 1:
        raise UserError("--folds 1 is a single split, not k-fold; make it without --folds")
    folders = find_classes(src, classes)
    old = previous_folds(src, dest, force)  # fails before every image is read
    images = read_images(src, folders)
    check_class_sizes(images, folds)  # before anything is written
    table = draw_folds(images, folds, seed)
    splits = [fold_split(table, list(images), fold, seed) for fold in range(folds)]
    check_fold_clashes(dest, splits, old)
    warn_small_classes(splits)
    print(format_folds(splits, len(table), seed))
    if dry_run:
        print("dry run: nothing written")
        return [counts for _, counts in splits]
    with writing_to(dest):
        old = previous_folds(src, dest, force)  # again, under the lock: another split may have finished
        check_fold_clashes(dest, splits, old)
        write_folds(src, dest, table, splits, link, old)
    report_kept(dest, {FOLDS, *(f"fold{i}/{path}" for i, (rows, _) in enumerate(splits)
                                for path in [MANIFEST, *(row["path"] for row in rows)])})
    print(f"wrote {folds} folds of {len(table)} images to {dest} and the fold list {dest / FOLDS}")
    return [counts for _, counts in splits]


# -----------------------------------------------------------------------------
# reading the folds back

def read_folds(dest, remedy):
    """folds.csv's rows, with fold and k as numbers, after checking they describe K folds of distinct images."""
    if not os.path.lexists(dest / FOLDS):
        raise UserError(f"{dest / FOLDS} is missing: the folds there are unfinished or were never made; {remedy}")
    rows = manifest_rows(dest / FOLDS, remedy, FOLDS_COLUMNS)
    edited = UserError(f"{dest / FOLDS} was edited or is from another split: {remedy}")
    try:
        for row in rows:
            row["fold"], row["k"] = int(row["fold"]), int(row["k"])
    except ValueError:
        raise edited from None
    k = rows[0]["k"] if rows else 0
    if not 2 <= k <= MAX_FOLDS or any(row["k"] != k or not 0 <= row["fold"] < k for row in rows):
        raise edited
    if len({row["source"] for row in rows}) != len(rows):  # an image in two folds
        raise edited
    return rows


def check_fold(folder, fold, table, remedy):
    """Fold `fold`'s split.csv is complete, lists folds.csv's images, and tests exactly folds.csv's fold `fold`."""
    manifest = folder / MANIFEST
    if os.path.lexists(folder / UNFINISHED_MANIFEST) or not os.path.lexists(manifest):
        raise UserError(f"{folder} is missing or unfinished (no {MANIFEST}): {remedy}")
    rows = manifest_rows(manifest, remedy)
    images = sorted((row["source"], row["sha256"]) for row in rows)
    test = {(row["source"], row["sha256"]) for row in rows if row["split"] == "test"}
    if images != sorted((row["source"], row["sha256"]) for row in table):
        raise UserError(f"{manifest} lists other images than {FOLDS}: it was edited or is from another split: {remedy}")
    if test != {(row["source"], row["sha256"]) for row in table if row["fold"] == fold}:
        raise UserError(f"{manifest}: its test images are not fold {fold} of {FOLDS}: it was edited or is from "
                        f"another split: {remedy}")


def fold_folders(dest, remedy="make the folds again with data_split.py SRC DEST --folds K --force"):
    """[DEST/fold0, ..., DEST/fold{K-1}] of a complete fold set, after checking its CSVs agree: each fold
    tests its fold of folds.csv, so every image is a test image exactly once. Cheap: no image is read.
    `remedy`: what each refusal tells the user to do (the maker of the folds knows)."""
    dest = Path(dest)
    table = read_folds(dest, remedy)
    folders = [dest / f"fold{i}" for i in range(table[0]["k"])]
    for fold, folder in enumerate(folders):
        check_fold(folder, fold, table, remedy)
    return folders
