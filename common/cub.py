"""The report's 7 CUB-200-2011 classes: found in a CUB_200_2011 folder, or extracted once from its
tar archive into a folder kept as a cache."""
import shutil
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from common.errors import UserError
from common.run_folder import make_folder

CUB_CLASSES = ("015.Lazuli_Bunting", "038.Great_Crested_Flycatcher", "041.Scissor_tailed_Flycatcher",
               "050.Eared_Grebe", "078.Gray_Kingbird", "099.Ovenbird", "114.Black_throated_Sparrow")


def cub_member_path(member):
    """Where an archive member goes below the class cache, or None if it is not in the report's classes."""
    for name in [member.name] + ([member.linkname] if member.issym() or member.islnk() else []):
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise UserError(f"archive member {member.name!r} points outside the archive; refusing to extract")
    parts = PurePosixPath(member.name).parts
    parts = parts[1:] if parts[:1] == ("CUB_200_2011",) else parts
    if len(parts) != 3 or parts[0] != "images" or parts[1] not in CUB_CLASSES:
        return None
    if not member.isfile():
        raise UserError(f"archive member {member.name!r} is a link or special file; refusing to extract")
    return PurePosixPath(*parts[1:])


def has_cub_classes(folder):
    return all((folder / name).is_dir() for name in CUB_CLASSES)


def extract_classes(archive, target):
    """The 7 classes' members of the archive into target/<class>/, in one pass over its 1.1 GB."""
    with tarfile.open(archive, "r|*") as tar:  # a stream
        for member in tqdm(tar, desc="reading archive", unit=" members", disable=None):
            rel = cub_member_path(member)
            if rel is None:
                continue
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as f, open(target / rel, "wb") as out:
                shutil.copyfileobj(f, out)


def extract_cub(archive, work):
    """Extract the report's 7 classes from a CUB_200_2011 tar archive into WORK/<class>/, kept as a cache."""
    if has_cub_classes(work):
        print(f"using the classes extracted before to {work} (delete it to extract again)", file=sys.stderr)
        return work
    if work.exists():
        raise UserError(f"{work} exists but lacks some of the 7 classes; delete it or pick another --work")
    make_folder(work.parent, "--work")
    # a fresh folder of our own, renamed to WORK only once complete: nothing of the user's is touched
    partial = Path(tempfile.mkdtemp(prefix=f".{work.name}.partial-", dir=work.parent))
    try:
        extract_classes(archive, partial)
        missing = [name for name in CUB_CLASSES if not (partial / name).is_dir()]
        if missing:
            raise UserError(f"{archive} lacks the classes {' '.join(missing)}")
        partial.rename(work)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {archive} as a tar archive: {e}")
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return work


def cub_images(path, work):
    """The folder holding the report's CUB classes: images/ of a CUB_200_2011 folder, or extracted from its archive."""
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_file():
        return extract_cub(path, work)
    for images in (path / "images", path / "CUB_200_2011" / "images"):
        if images.is_dir():
            return images
    raise UserError(f"{path} has no images/ folder; give the CUB_200_2011 folder or CUB_200_2011.tgz")
