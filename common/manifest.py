"""A split's manifest, DEST/split.csv: one row per image (path, source, class, split, sha256), written
once the split is complete and read back by --force, which replaces only the files it lists."""
import csv
import io
import os
from pathlib import PurePosixPath

from common.errors import UserError, warn
from common.data import MANIFEST, SPLITS, UNFINISHED_MANIFEST
from common.files import NotRegularFile, atomic_write, open_regular
from common.paths import is_inside

MANIFEST_COLUMNS = ["path", "source", "class", "split", "sha256"]


def recordable_name(path):
    """False for names the manifest (UTF-8 CSV) cannot hold, which are left out: names that are not
    valid UTF-8, and names with a carriage return (csv leaves it unquoted, so a reader splits the row)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        warn(f"{ascii(str(path))}: the name is not valid UTF-8; left out (rename it to include it)")
        return False
    if "\r" in str(path):
        warn(f"{ascii(str(path))}: the name holds a carriage return; left out (rename it to include it)")
        return False
    return True


def manifest_rows(manifest, remedy, columns=MANIFEST_COLUMNS):
    """A manifest's rows, or one error line ending in `remedy` where it is no regular file (a FIFO would
    be waited on forever), has other columns than `columns`, or is not CSV that the csv module reads."""
    try:
        with open_regular(manifest, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != columns:
                raise UserError(f"{manifest} was not written by data_split.py; {remedy}")
            return list(reader)
    except NotRegularFile as e:
        raise UserError(f"{e}; {remedy}") from None
    except csv.Error as e:  # e.g. a field over csv's 128 KB limit
        raise UserError(f"{manifest} is damaged ({e}); {remedy}") from None


def read_manifest(dest):
    """Paths listed by DEST's previous manifests (a finished one, an interrupted one), after checking
    each stays inside a split folder of DEST."""
    listed_in = {}  # path -> the manifest listing it
    for manifest in (dest / MANIFEST, dest / UNFINISHED_MANIFEST):
        if os.path.lexists(manifest):
            rows = manifest_rows(manifest, "move it away to use --force")
            listed_in.update((row["path"], manifest) for row in rows)
    for path, manifest in listed_in.items():
        parts = PurePosixPath(path).parts
        escapes = not parts or parts[0] not in SPLITS or ".." in parts or PurePosixPath(path).is_absolute()
        if escapes or not is_inside((dest / path).parent, dest) or os.path.realpath((dest / path).parent) == os.path.realpath(dest):
            raise UserError(f"{manifest} lists {path!r}, outside DEST's split folders; not touching it")
    return set(listed_in)


def write_manifest(path, rows, columns=MANIFEST_COLUMNS):
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue())
