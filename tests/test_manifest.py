"""common/manifest.py through data_split.py: names the manifest cannot hold are left out, and --force
reads a previous manifest safely (paths outside DEST, a FIFO, a damaged CSV: one error line each)."""
import csv
import os
import subprocess
import sys

import pytest

import data_split as ds
from common.cli import UserError
from conftest import REPO
from test_data_split import cli_error, files_under, read_manifest, src  # noqa: F401 (src: a fixture)


def test_force_refuses_a_manifest_pointing_outside(src, tmp_path):
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    with open(dest / "split.csv", "a", newline="") as f:
        csv.writer(f).writerow(["train/../../src/a/img_000.png", "a/img_000.png", "a", "train", "0"])
    with pytest.raises(UserError, match="outside DEST"):
        ds.main([str(src), str(dest), "--force"])
    assert (src / "a" / "img_000.png").exists()


def test_a_file_name_that_is_not_utf8_is_left_out_with_a_warning(src, tmp_path, capsys):
    odd = os.fsencode(src / "a") + b"/\xff\xfe.png"
    with open(odd, "wb") as f:
        f.write((src / "a" / "img_000.png").read_bytes())
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    assert "the name is not valid UTF-8; left out" in capsys.readouterr().err
    rows = read_manifest(dest)
    assert len(rows) == 37 and not (dest / "split.csv.incomplete").exists()
    assert files_under(dest) == {"split.csv", *(row["path"] for row in rows)}


def test_a_name_with_a_carriage_return_is_left_out_so_the_manifest_reads_back(src, tmp_path, capsys):
    (src / "a" / "odd\rname.png").write_bytes((src / "a" / "img_000.png").read_bytes())
    (src / "odd\rclass").mkdir()
    (src / "odd\rclass" / "img.png").write_bytes((src / "a" / "img_000.png").read_bytes())
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    assert capsys.readouterr().err.count("holds a carriage return; left out") == 2
    rows = read_manifest(dest)
    assert len(rows) == 37 and {r["class"] for r in rows} == {"a", "b", "c"}
    ds.main([str(src), str(dest), "--force", "--seed", "3"])  # the manifest reads back: --force works
    assert files_under(dest) == {"split.csv", *(row["path"] for row in read_manifest(dest))}


@pytest.mark.slow
@pytest.mark.parametrize("manifest", ["split.csv", "split.csv.incomplete"])
def test_a_fifo_manifest_is_one_error_not_a_wait(src, tmp_path, manifest):
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    (dest / "split.csv").unlink()
    os.mkfifo(dest / manifest)
    done = subprocess.run([sys.executable, str(REPO / "data_split.py"), str(src), str(dest), "--force"],
                          capture_output=True, text=True, timeout=120)  # before: reading the FIFO waited forever
    assert done.returncode == 2 and done.stderr == f"error: {dest / manifest} is not a regular file (a FIFO, device " \
                                                   "or folder); move it away to use --force\n"


def test_a_manifest_field_over_the_csv_limit_is_one_error(src, tmp_path, capsys):
    dest = tmp_path / "dest"
    ds.main([str(src), str(dest)])
    with open(dest / "split.csv", "a") as f:
        f.write("train/a/" + "x" * 200_000 + ".png,a/x.png,a,train,0\n")  # csv reads fields up to 128 KB
    code, out, err = cli_error([src, dest, "--force"], capsys)
    assert code == 2 and err == f"error: {dest / 'split.csv'} is damaged (field larger than field limit (131072)); " \
                                "move it away to use --force\n"
