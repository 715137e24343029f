"""common/cub.py through data_split.py --cub: the report's 7 classes from a CUB_200_2011 folder or its
archive, extracted once into a cache, and archive members that point outside refused."""
import io
import tarfile

import pytest

import data_split as ds
from common.cli import UserError
from common.cub import CUB_CLASSES
from test_data_split import make_image, read_manifest, sha256


def make_cub(root, classes=CUB_CLASSES):
    """A fake CUB_200_2011 folder: 3 images in each class, plus a class the report did not use."""
    for k, name in enumerate([*classes, "001.Black_footed_Albatross"]):
        for i in range(3):
            make_image(root / "CUB_200_2011" / "images" / name / f"{name[4:]}_{i}.jpg", index=10 * k + i)
    return root / "CUB_200_2011"


def make_tgz(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="CUB_200_2011")
    return path


def test_cub_folder(tmp_path):
    dest = tmp_path / "dest"
    ds.main(["--cub", str(make_cub(tmp_path)), str(dest)])
    rows = read_manifest(dest)
    assert {r["class"] for r in rows} == set(CUB_CLASSES) and len(rows) == 21
    assert sorted(p.name for p in (dest / "train").iterdir()) == sorted(CUB_CLASSES)


def test_cub_archive_is_extracted_once_and_dry_run_leaves_nothing(tmp_path, capsys):
    archive = make_tgz(make_cub(tmp_path / "cub"), tmp_path / "CUB_200_2011.tgz")
    ds.main(["--cub", str(archive), str(tmp_path / "dry"), "--dry-run"])
    assert not (tmp_path / "cub_7classes").exists() and not (tmp_path / "dry").exists()
    dest = tmp_path / "dest"
    ds.main(["--cub", str(archive), str(dest)])
    work = tmp_path / "cub_7classes"  # next to DEST by default
    assert sorted(p.name for p in work.iterdir()) == sorted(CUB_CLASSES)
    rows = read_manifest(dest)
    assert len(rows) == 21 and all(r["sha256"] == sha256(work / r["source"]) for r in rows)
    capsys.readouterr()
    ds.main(["--cub", str(archive), str(dest), "--force"])
    assert "extracted before" in capsys.readouterr().err
    assert read_manifest(dest) == rows


def test_cub_missing_classes_are_named(tmp_path):
    folder = make_cub(tmp_path / "cub", classes=CUB_CLASSES[:5])
    with pytest.raises(UserError, match="099.Ovenbird 114.Black_throated_Sparrow"):
        ds.main(["--cub", str(folder), str(tmp_path / "d1")])
    archive = make_tgz(folder, tmp_path / "CUB_200_2011.tgz")
    with pytest.raises(UserError, match="099.Ovenbird 114.Black_throated_Sparrow"):
        ds.main(["--cub", str(archive), str(tmp_path / "d2"), "--work", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists() and not list(tmp_path.glob("*partial*"))


def test_cub_extraction_leaves_a_users_folder_named_like_its_temporary_one_alone(tmp_path):
    archive = make_tgz(make_cub(tmp_path / "cub"), tmp_path / "CUB_200_2011.tgz")
    mine = tmp_path / "thesis.partial"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("draft")
    ds.main(["--cub", str(archive), str(tmp_path / "dest"), "--work", str(tmp_path / "thesis")])
    assert (mine / "chapter1.tex").read_text() == "draft"
    assert sorted(p.name for p in (tmp_path / "thesis").iterdir()) == sorted(CUB_CLASSES)
    assert not list(tmp_path.glob(".thesis.partial-*"))


def test_cub_not_an_archive(tmp_path):
    (tmp_path / "CUB_200_2011.tgz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match="cannot read"):
        ds.main(["--cub", str(tmp_path / "CUB_200_2011.tgz"), str(tmp_path / "dest")])


CLASS_DIR = f"CUB_200_2011/images/{CUB_CLASSES[0]}"
EVIL_MEMBERS = {
    "dot-dot": (f"{CLASS_DIR}/../../../../evil.jpg", tarfile.REGTYPE, ""),
    "absolute": ("/tmp/evil_data_split_test.jpg", tarfile.REGTYPE, ""),
    "symlink out": (f"{CLASS_DIR}/evil.jpg", tarfile.SYMTYPE, "/etc/passwd"),
    "hardlink out": (f"{CLASS_DIR}/evil.jpg", tarfile.LNKTYPE, "../../../../evil.jpg"),
    "symlink in class": (f"{CLASS_DIR}/evil.jpg", tarfile.SYMTYPE, "Lazuli_Bunting_0.jpg"),
}


@pytest.mark.parametrize("case", EVIL_MEMBERS)
def test_cub_archive_member_escaping_is_refused(case, tmp_path):
    archive = tmp_path / "CUB_200_2011.tgz"
    name, kind, target = EVIL_MEMBERS[case]
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(make_cub(tmp_path / "cub"), arcname="CUB_200_2011")
        member = tarfile.TarInfo(name)
        member.type, member.linkname, member.size = kind, target, 4 if kind == tarfile.REGTYPE else 0
        tar.addfile(member, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)
    with pytest.raises(UserError, match="refusing to extract"):
        ds.main(["--cub", str(archive), str(tmp_path / "dest")])
    assert not list(tmp_path.rglob("evil*")) and not list(tmp_path.glob("cub_7classes*"))
