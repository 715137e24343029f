"""The cache of arrays computed once (decoded images, task 1's features): numpy files under
$REPRO_CACHE_DIR (default .cache/), each ending with the SHA-256 of its bytes, read back through
memory maps so that memory holds what is read, not the data set."""
import contextlib
import functools
import hashlib
import io
import os
import threading
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError, warn
from common.paths import REPO, is_inside

CACHE_DIR = Path(os.environ.get("REPRO_CACHE_DIR") or REPO / ".cache")  # unset or empty: the default
DIGEST_PREFIX = b"\nsha256:"
DIGEST_TRAILER = len(DIGEST_PREFIX) + 64  # bytes after np.save's in a cache entry: the SHA-256 of those, in hex


def digest_trailer(f, size, chunk=1 << 20):
    """The trailer for the first `size` bytes of open file f: their SHA-256, read a chunk at a time
    (a feature entry may be GBs)."""
    f.seek(0)
    digest = hashlib.sha256()
    while size > 0:
        data = f.read(min(chunk, size))
        if not data:
            break
        digest.update(data)
        size -= len(data)
    return DIGEST_PREFIX + digest.hexdigest().encode()


def digest_matches(file):
    """Whether a cache entry ends with the SHA-256 of the rest of its bytes. A mismatch (a damaged
    entry) is named in a warning; an entry without one (written before entries had it) is not."""
    with open(file, "rb") as f:
        size = f.seek(0, os.SEEK_END) - DIGEST_TRAILER
        if size <= 0:
            return False
        f.seek(size)
        trailer = f.read(DIGEST_TRAILER)
        if trailer == digest_trailer(f, size):
            return True
    if trailer.startswith(DIGEST_PREFIX):
        warn(f"{file}: a damaged cache entry (its bytes do not match their SHA-256); made again")
    return False


class ArrayCache:
    """numpy arrays in FOLDER/<key>.npy, each followed by the SHA-256 of its bytes (DIGEST_TRAILER).
    A corrupt, foreign or damaged entry counts as missing and is replaced; a folder that cannot be
    written turns the cache off, with one warning per process."""
    unwritable = set()  # folders found unwritable in this process
    checked = set()  # entries whose digest matched in this process: later reads are not hashed again
    _lock = threading.Lock()

    def __init__(self, folder):
        self.folder = Path(folder)

    def file(self, key):
        return self.folder / f"{key}.npy"

    def get(self, key, shape, dtype, mmap=False):
        """The entry, or None if missing, damaged, or not of this shape and dtype. mmap=True maps it
        instead of reading it: its pages come in (and may go) as they are used. Its digest is checked
        the first time this process reads it, which reads it whole once."""
        file = self.file(key)
        if not file.is_file():  # missing, or a FIFO or device that reading would block on
            return None
        try:  # allow_pickle=False: a .npy holding pickled objects is refused, never executed
            array = np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
            if array.shape != tuple(shape) or array.dtype != dtype:
                return None
            if file not in self.checked:
                if not digest_matches(file):
                    return None
                self.checked.add(file)
            return array
        except (OSError, ValueError, EOFError):
            return None

    def put(self, key, array):
        """Store the entry; False if the cache cannot be written (the caller keeps the array itself)."""
        if self.folder in self.unwritable:
            return False
        file = self.file(key)
        if file.is_dir():  # one bad entry, not an unwritable cache
            warn(f"{file}: a folder where a cache entry belongs; that entry stays in memory")
            return False
        tmp = file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w+b") as f:
                np.save(f, array)
                f.write(digest_trailer(f, f.tell()))  # reads back what np.save wrote, from the page cache
            os.replace(tmp, file)  # atomic: a crash never leaves a half-written entry
            self.checked.add(file)
            return True
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            with self._lock:
                if self.folder.parent not in self.unwritable:  # one warning for the cache and its sub-folders
                    warn(f"cannot write the cache {self.folder.parent} ({e.strerror or e}); this run keeps "
                         f"what it computes in memory only (set REPRO_CACHE_DIR to move the cache)")
                self.unwritable.update({self.folder, self.folder.parent})
            return False


def check_cache_outside(*folders, cache_dir=None):
    """Refuse a cache (REPRO_CACHE_DIR) inside a folder the run reads, before anything is written: its
    entries would land among the user's images, and its folders would be read as classes."""
    cache = Path(cache_dir or CACHE_DIR)
    for folder in folders:
        if is_inside(cache, folder):
            raise UserError(f"the cache folder {cache} is inside {folder}, which this run reads: set REPRO_CACHE_DIR "
                            "to a folder outside the data")


def read_mapped(file, shape, dtype):
    """The .npy array in `file`, memory-mapped: nothing is read until it is indexed, and the mapping
    goes when the array does. A file that is gone or changed (another shape or type, not a regular
    file any more) is one error, not a crash or a wait on a FIFO."""
    try:
        if not os.path.isfile(file):
            raise FileNotFoundError(file)
        array = np.load(file, allow_pickle=False, mmap_mode="r")
        if array.shape != tuple(shape) or array.dtype != dtype:
            raise ValueError(f"{array.dtype} {array.shape}")
        return array
    except (OSError, ValueError, EOFError) as e:  # deleted or replaced while the run was going
        raise UserError(f"the cache file {file} went missing or changed during the run ({type(e).__name__}); "
                        f"run again") from None


@functools.lru_cache(maxsize=None)
def npy_header(shape, dtype):
    """The bytes np.save writes before an array of this shape and dtype."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(np.empty(shape, dtype)))
    return header.getvalue()


class MappedArray:
    """A .npy array (task 1's features) that stays on disk: indexing it reads just those rows through
    a memory map that lasts the read, so memory holds the rows read, not the array."""

    def __init__(self, file, shape, dtype):
        self.file, self.shape, self.numpy_dtype = file, tuple(shape), np.dtype(dtype)
        self.dtype = torch.from_numpy(np.empty(0, self.numpy_dtype)).dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        index = index.numpy() if isinstance(index, torch.Tensor) else index
        rows = read_mapped(self.file, self.shape, self.numpy_dtype)[index]
        return torch.from_numpy(np.array(rows))  # a copy: the map goes now
