"""Splitting a folder of class sub-folders into train / validation / test folders that ImageFolder reads;
data_split.py is the command line over it.

DEST gets train/, validation/ and test/, each with every class folder, plus the manifest
DEST/split.csv (common/manifest.py). The split is stratified per class and shuffled with a seed,
so the same seed gives the same split anywhere. SRC is only read.
"""
import contextlib
import hashlib
import io
import os
import random
import shutil
import sys
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from common.errors import UserError, warn
from common.data import (MANIFEST, SPLITS, UNFINISHED_MANIFEST, class_folders, has_image_extension, is_image_file,
                         open_rgb, walk_files)
from common.manifest import read_manifest, recordable_name, write_manifest
from common.paths import is_inside
from common.run_folder import check_folder_writable, lock, make_folder

DEFAULT_RATIOS = (0.7, 0.2, 0.1)  # the report's text; its code split 0.7 0.1 0.2


# -----------------------------------------------------------------------------
# how many images each split gets

def check_ratios(ratios):
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3:
        raise UserError(f"--ratios takes 3 numbers (train validation test), got {len(ratios)}")
    if not all(r >= 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:  # `r >= 0` also rejects nan
        raise UserError(f"--ratios must be 3 non-negative numbers summing to 1, got {' '.join(map(str, ratios))}")
    return ratios


def split_counts(n, ratios):
    """Images per split for a class of n images; the counts sum to n.

    Validation and test get round-half-up(n * ratio) and train the rest: at 0.7 0.1 0.2 every
    class of 58 to 62 images gets 6 validation and 12 test images, which gives the report's
    split sizes for its 417 CUB images, 291 / 42 / 84. Then the largest split hands one image at a time to any
    split left negative by the rounding or, when the class has an image for every split with a
    nonzero ratio, to such a split left empty.
    """
    counts = [0] + [int(n * r + 0.5) for r in ratios[1:]]
    counts[0] = n - sum(counts[1:])
    one_each = n >= sum(r > 0 for r in ratios)
    while True:
        short = [i for i, c in enumerate(counts) if c < 0 or (one_each and c == 0 and ratios[i] > 0)]
        if not short:
            return counts
        donor = max(range(3), key=lambda i: counts[i])
        counts[donor] -= 1
        counts[short[0]] += 1


# -----------------------------------------------------------------------------
# reading SRC

def find_classes(src, classes=None):
    """Class name -> folder; `classes` picks some by name (all non-hidden sub-folders otherwise)."""
    if not src.exists():
        raise UserError(f"{src} does not exist")
    if not src.is_dir():
        raise UserError(f"{src} is not a folder")
    if not any(p for p in src.iterdir() if not p.name.startswith(".")):
        raise UserError(f"{src} is empty")
    folders = {p.name: p for p in class_folders(src) if recordable_name(p)}  # the task scripts' classes
    if classes is not None:
        missing = [c for c in classes if c not in folders]
        if missing:
            raise UserError(f"{src} lacks the class folders {' '.join(missing)}")
        folders = {c: folders[c] for c in classes}
    if not folders:
        raise UserError(f"{src} has no class folders (it should hold one sub-folder per class)")
    if len(folders) < 2:
        raise UserError(f"{src} has only one class folder ({next(iter(folders))}); a classifier needs at least 2")
    return folders


def list_files(src, folders):
    """Posix paths, relative to SRC, of the image files in the class folders, as the task scripts list
    them (common.data.walk_files: hidden entries skipped, links to folders not followed).

    Left out with a warning: names that are not UTF-8, and anything but a regular file (reading
    a FIFO named x.png would wait forever). Other files are counted and skipped.
    """
    images, others = [], []
    for folder in folders.values():
        for path in map(Path, walk_files(folder)):
            if not recordable_name(path):
                continue
            if not has_image_extension(path.name):
                others.append(path.relative_to(src).as_posix())
            elif is_image_file(path):
                images.append(path.relative_to(src).as_posix())
    if others:
        print(f"skipped {len(others)} non-image files, e.g. {others[0]}", file=sys.stderr)
    return images


def source_listing(src, classes=None):
    """What a split of SRC is made from, cheaply, as a hash: each file's path, size and modification time
    in the class folders (`classes` picks some). It changes when an image or class is added, removed or
    edited, so reproduce.py makes a new split then instead of reusing the old one."""
    digest = hashlib.sha1()
    for folder in class_folders(src):
        for path in walk_files(folder) if classes is None or folder.name in classes else ():
            try:
                info = os.stat(path)
                entry = (os.path.relpath(path, src), info.st_size, info.st_mtime_ns)
            except OSError:  # a broken link: its name alone
                entry = (os.path.relpath(path, src),)
            digest.update(repr(entry).encode())  # repr escapes a name's bytes that are not UTF-8
    return digest.hexdigest()


def read_images(src, folders):
    """Class -> [(source, sha256)] of the images that decode; warns about and leaves out the rest."""
    images = {name: [] for name in folders}
    for source in tqdm(list_files(src, folders), desc="checking images", disable=None):
        try:
            data = (src / source).read_bytes()
            if not data:
                raise ValueError("empty file")
            open_rgb(io.BytesIO(data))  # a full decode: truncated files fail here, not at open
        except Exception as e:  # PIL raises many types for bad files; any of them means "leave it out"
            warn(f"{src / source}: cannot be read as an image ({e}); left out")
            continue
        images[source.split("/")[0]].append((source, hashlib.sha256(data).hexdigest()))
    for name in [n for n, items in images.items() if not items]:
        warn(f"class {name} has no readable images; left out")
        del images[name]
    if len(images) < 2:
        raise UserError(f"{src} has readable images in {len(images)} class folder(s); a classifier needs at least 2")
    return images


def class_rows(name, parts):
    """Manifest rows of class `name`'s images, given as {split: [(source, sha256)]}."""
    return [{"path": f"{split}/{source}", "source": source, "class": name, "split": split, "sha256": digest}
            for split, items in parts.items() for source, digest in items]


def in_split_order(rows):
    return sorted(rows, key=lambda row: (SPLITS.index(row["split"]), row["path"]))


def assign_splits(images, ratios, seed):
    """Manifest rows: each class shuffled with a seed of its own, then cut by split_counts."""
    rows, counts = [], {}
    for name, items in images.items():
        items = sorted(items)  # directory listing order differs between file systems
        random.Random(f"{seed}:{name}").shuffle(items)  # a str seed hashes the same in every process
        counts[name] = dict(zip(SPLITS, split_counts(len(items), ratios)))
        empty = [s for s, r in zip(SPLITS, ratios) if r > 0 and counts[name][s] == 0]
        if empty:
            warn(f"class {name} has only {len(items)} images: none for {' and '.join(empty)}")
        start, parts = 0, {}
        for split, count in counts[name].items():
            parts[split] = items[start:start + count]
            start += count
        rows += class_rows(name, parts)
    return in_split_order(rows), counts


def format_counts(counts):
    width = max(len("class"), len("total"), *(len(name) for name in counts))
    totals = {s: sum(c[s] for c in counts.values()) for s in SPLITS}
    lines = [f"{'class':<{width}}  {'train':>6}  {'validation':>10}  {'test':>6}  {'total':>6}"]
    for name, c in [*counts.items(), ("total", totals)]:
        lines.append(f"{name:<{width}}  {c['train']:>6}  {c['validation']:>10}  {c['test']:>6}  {sum(c.values()):>6}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# DEST

def check_new_dest(src, dest, force, markers, made):
    """Refuse unsafe or unwritable destinations; True where DEST holds what --force may replace: `made`
    ("a split", "folds") that data_split.py wrote there, known by one of its `markers` (manifest names)."""
    if is_inside(dest, src):
        raise UserError(f"DEST {dest} is inside SRC {src}; SRC must stay untouched")
    if is_inside(src, dest):
        raise UserError(f"SRC {src} is inside DEST {dest}; pick a DEST outside it")
    check_folder_writable(dest, "DEST")
    if not dest.is_dir() or not any(dest.iterdir()):
        return False
    if not force:
        raise UserError(f"{dest} is not empty; use --force to replace {made} written there before")
    if not any(os.path.lexists(dest / name) for name in markers):
        raise UserError(f"{dest} is not empty and holds no {markers[0]}: --force replaces only {made} that "
                        "data_split.py wrote; pick a new or empty DEST")
    return True


def check_dest(src, dest, force):
    """Refuse unsafe or unwritable destinations; the manifest paths a --force run may replace."""
    if not check_new_dest(src, dest, force, (MANIFEST, UNFINISHED_MANIFEST), "a split"):
        return set()
    return read_manifest(dest)


def remove_old_split(dest, old_paths):
    """Delete the files of the previous split and the folders they leave empty."""
    folders = set()
    for path in old_paths:
        (dest / path).unlink(missing_ok=True)  # unlinking a link never touches what it points to
        folders.update(PurePosixPath(path).parents)
    for folder in sorted(folders - {PurePosixPath(".")}, key=lambda p: -len(p.parts)):
        if (dest / folder).is_dir() and not any((dest / folder).iterdir()):
            (dest / folder).rmdir()


def place(source, target, link):
    """Copy, or hard-link; returns False where a hard link failed and a symlink stands in."""
    if not link:
        shutil.copy2(source, target)
        return True
    try:
        os.link(source, target)
        return True
    except OSError:  # e.g. SRC and DEST on different file systems
        os.symlink(source.resolve(), target)
        return False


def write_split(src, dest, rows, classes, link, old_paths):
    """split.csv appears last, so a DEST without it is unfinished (reproduce.py and the loaders
    treat it so). Until then split.csv.incomplete lists every path this call may leave behind,
    the old split's included, so that --force can clean up after an interrupted run."""
    dest.mkdir(parents=True, exist_ok=True)
    leftovers = sorted(old_paths - {row["path"] for row in rows})
    write_manifest(dest / UNFINISHED_MANIFEST, rows + [{"path": path} for path in leftovers])
    (dest / MANIFEST).unlink(missing_ok=True)
    remove_old_split(dest, old_paths)
    for split in SPLITS:
        for name in classes:
            (dest / split / name).mkdir(parents=True, exist_ok=True)
    symlinked = 0
    for row in tqdm(rows, desc="linking" if link else "copying", disable=None):
        (dest / row["path"]).parent.mkdir(parents=True, exist_ok=True)  # images in sub-folders of a class
        symlinked += not place(src / row["source"], dest / row["path"], link)
    if symlinked:
        warn(f"hard links failed for {symlinked} files; made symbolic links to SRC instead")
    write_manifest(dest / MANIFEST, rows)
    (dest / UNFINISHED_MANIFEST).unlink()


def check_clashes(dest, rows, old_paths):
    """Files of the user's in DEST that the new split would overwrite, or read as its own images."""
    clashes = [row["path"] for row in rows if row["path"] not in old_paths and os.path.lexists(dest / row["path"])]
    if clashes:
        raise UserError(f"{dest / clashes[0]} exists and no previous manifest lists it; move it away")
    strays = (p for split in SPLITS for p in map(Path, walk_files(dest / split))
              if has_image_extension(p.name) and p.relative_to(dest).as_posix() not in old_paths)
    stray = next(strays, None)
    if stray is not None:
        raise UserError(f"{stray} is an image no previous manifest lists, inside a split folder: the new split "
                        "would use it as one of its own; move it away")


@contextlib.contextmanager
def writing_to(dest):
    """DEST made and locked while a split is written there: two splits into one DEST at once would mix
    their files. Checks that another split may have outdated belong inside, under the lock."""
    make_folder(dest, "DEST")
    with lock(dest, "DEST"):
        try:
            yield
        except OSError as e:
            raise UserError(f"cannot write {dest}: {e}")


def report_kept(dest, written):
    """Say what DEST holds besides the paths (relative, posix) just `written`: files of the user's, kept."""
    kept = [p for p in dest.rglob("*") if not p.is_dir() and p.relative_to(dest).as_posix() not in written]
    if kept:
        print(f"kept {len(kept)} files in {dest} that no manifest lists, e.g. {kept[0].relative_to(dest)}")


def split_dataset(src, dest, ratios=DEFAULT_RATIOS, seed=0, link=False, force=False, dry_run=False, classes=None):
    """Split SRC's class folders into DEST/{train,validation,test}/<class>/; prints and returns the counts.

    Returns {class: {"train": n, "validation": n, "test": n}}. `classes` picks class folders by name.
    """
    src, dest, ratios = Path(src), Path(dest), check_ratios(ratios)
    folders = find_classes(src, classes)
    old_paths = check_dest(src, dest, force)  # fails before every image is read
    rows, counts = assign_splits(read_images(src, folders), ratios, seed)
    check_clashes(dest, rows, old_paths)
    print(format_counts(counts))
    if dry_run:
        print("dry run: nothing written")
        return counts
    with writing_to(dest):
        old_paths = check_dest(src, dest, force)  # again, under the lock: another split may have finished
        check_clashes(dest, rows, old_paths)
        write_split(src, dest, rows, list(counts), link, old_paths)
    report_kept(dest, {MANIFEST, *(row["path"] for row in rows)})
    print(f"wrote {len(rows)} images to {dest} and the manifest {dest / MANIFEST}")
    return counts
