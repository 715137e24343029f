"""Rebuild the 7-class demo image set from Debian's tuxpaint-stamps-default package (GPL-2).

Each stamp PNG becomes a 256x256 white-background RGB JPEG, object cropped and centred.
Pillow and the standard library only, so it runs before the rest of the project is installed.
"""
import argparse
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

# run as `python demo_data/build_demo_data.py`: make the repo root importable for `common`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.cli import UserError, run_main  # noqa: E402

PACKAGE = "tuxpaint-stamps-default"
STAMPS_IN_PACKAGE = "usr/share/tuxpaint/stamps"
CLASSES = ("animals", "food", "household", "plants", "seasonal", "town", "vehicles")
SIZE = 256
DEFAULT_OUT = Path(__file__).resolve().parent / "images"


def stamp_to_square(img, size=SIZE):
    """Stamp of any mode -> size x size RGB: on white, cropped to its alpha box, padded square, centred."""
    rgba = img.convert("RGBA")  # honours palette/colour-key transparency and LA
    box = rgba.getchannel("A").getbbox()
    if box is None:
        raise ValueError("stamp is fully transparent")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB").crop(box)
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    return square.resize((size, size), Image.LANCZOS)


def output_name(relative_path):
    """'birds/cartoon/Penguin-2.png' -> 'birds_cartoon_penguin-2': deterministic, lower-case, safe."""
    stem = "_".join(relative_path.with_suffix("").parts).lower()
    return re.sub(r"[^a-z0-9_-]+", "_", stem)


def jpeg_bytes(img, quality):
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def extract_deb(deb, into):
    """Unpack a .deb without installing it; returns the package version."""
    if not deb.is_file():
        raise UserError(f"--deb {deb}: no such file")
    try:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True, capture_output=True)
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                                 capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        raise UserError("dpkg-deb not found: run on Debian/Ubuntu, or unpack the .deb yourself and pass --stamps")
    except subprocess.CalledProcessError as e:
        raise UserError(f"cannot unpack {deb}: {e.stderr.decode().strip()}")
    return version


def download_deb(into):
    try:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=into, check=True, capture_output=True)
    except FileNotFoundError:
        raise UserError("apt-get not found: pass --deb FILE or --stamps DIR instead")
    except subprocess.CalledProcessError as e:
        raise UserError(f"apt-get download {PACKAGE} failed (try `apt-get update` first): "
                        f"{e.stderr.decode().strip().splitlines()[-1]}")
    return next(Path(into).glob(f"{PACKAGE}_*.deb"))


def check_out_dir(out, force):
    """Refuse a non-empty --out unless --force, before any slow download."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} is not empty (use --force to replace its class folders)")


def build(stamps, out, quality):
    """Convert every class's PNGs; drop outputs byte-identical to an earlier one. Returns per-class counts."""
    missing = [name for name in CLASSES if not (stamps / name).is_dir()]
    if missing:
        raise UserError(f"{stamps} lacks class folders {', '.join(missing)} "
                        f"(expected the package's {STAMPS_IN_PACKAGE})")
    seen = set()
    counts = {}
    for name in CLASSES:
        shutil.rmtree(out / name, ignore_errors=True)  # --force: no stale images from an older build
        (out / name).mkdir(parents=True)
        pngs = sorted(p.relative_to(stamps / name) for p in (stamps / name).rglob("*.png"))
        written = {}
        for relative in pngs:
            try:
                with Image.open(stamps / name / relative) as img:
                    data = jpeg_bytes(stamp_to_square(img), quality)
            except (OSError, ValueError) as e:  # unreadable or fully transparent PNG
                raise UserError(f"{stamps / name / relative}: {e}")
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                continue
            seen.add(digest)
            target = output_name(relative)
            if target in written:
                raise UserError(f"{name}/{relative} and {name}/{written[target]} both map to {target}.jpg")
            written[target] = relative
            (out / name / f"{target}.jpg").write_bytes(data)
        counts[name] = (len(pngs), len(written))
    return counts


def print_table(counts, out):
    print(f"{'class':<10} {'stamps':>6} {'images':>6}")
    for name, (found, kept) in counts.items():
        print(f"{name:<10} {found:>6} {kept:>6}")
    total_bytes = sum(f.stat().st_size for f in out.rglob("*.jpg"))
    print(f"{'total':<10} {sum(f for f, _ in counts.values()):>6} {sum(k for _, k in counts.values()):>6}"
          f"   ({total_bytes / 1e6:.1f} MB in {out})")


def main():
    parser = argparse.ArgumentParser(
        description=f"Rebuild the demo image set from Debian's {PACKAGE} package. With neither --deb nor "
                    f"--stamps it runs `apt-get download {PACKAGE}` into a temporary folder (needs a prior "
                    "`apt-get update`); the package is unpacked, never installed. Each PNG becomes a 256x256 "
                    "JPEG: composited on white, cropped to the box of its non-transparent pixels, padded square "
                    "and centred. Stamps in sub-folders count for their top folder; outputs byte-identical to an "
                    "earlier one are dropped.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--deb", type=Path, help=f"an already downloaded {PACKAGE}_*.deb to unpack")
    source.add_argument("--stamps", type=Path,
                        help=f"an already unpacked stamps folder (the package's {STAMPS_IN_PACKAGE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder, gets one sub-folder per class (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="allow a non-empty --out; its class folders are deleted and rewritten")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality 1-95 (default: %(default)s)")
    args = parser.parse_args()
    if not 1 <= args.quality <= 95:
        raise UserError(f"--quality {args.quality}: must be 1-95")
    check_out_dir(args.out, args.force)
    with tempfile.TemporaryDirectory() as tmp:
        stamps, version = args.stamps, "unknown (--stamps)"
        if stamps is None:
            deb = args.deb or download_deb(tmp)
            version = extract_deb(deb, Path(tmp) / "root")
            stamps = Path(tmp) / "root" / STAMPS_IN_PACKAGE
        print(f"{PACKAGE} version {version}, stamps from {stamps}")
        counts = build(stamps, args.out, args.quality)
    print_table(counts, args.out)


if __name__ == "__main__":
    run_main(main)
