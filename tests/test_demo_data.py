"""The committed demo image set is sane, and the builder's stamp transform does what it says."""
import hashlib

from PIL import Image

from demo_data.build_demo_data import CLASSES, stamp_to_square  # repo root is on sys.path via conftest.py
from conftest import REPO

IMAGES = REPO / "demo_data" / "images"
WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


def near(pixel, colour, tolerance=12):
    """Resampling rings a little at edges, so compare colours loosely."""
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


def test_class_folders_and_counts():
    folders = sorted(p.name for p in IMAGES.iterdir() if p.is_dir())
    assert folders == ["animals", "food", "household", "plants", "seasonal", "town", "vehicles"]
    assert tuple(folders) == CLASSES
    for name in folders:
        assert len(list((IMAGES / name).glob("*.jpg"))) >= 30, name


def test_every_image_is_a_256_rgb_jpeg_and_unique():
    files = sorted(f for f in IMAGES.rglob("*") if f.is_file())
    assert all(f.suffix == ".jpg" and f.parent.parent == IMAGES for f in files)
    digests = set()
    for f in files:
        with Image.open(f) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (256, 256)), f
            img.load()  # a truncated file fails here, not at open
        digests.add(hashlib.sha256(f.read_bytes()).digest())
    assert len(digests) == len(files)


def test_stamp_to_square_crops_pads_and_whitens():
    # transparent *black* everywhere except an opaque red 120x60 box off to one side, with a hole in its middle
    stamp = Image.new("RGBA", (300, 160), (0, 0, 0, 0))
    stamp.paste((255, 0, 0, 255), (170, 20, 290, 80))
    stamp.paste((0, 0, 0, 0), (220, 40, 240, 60))
    out = stamp_to_square(stamp)
    assert (out.mode, out.size) == ("RGB", (256, 256))
    # the red box fills the width (border cropped) and is centred vertically: white bands of 64 above and below
    assert all(near(out.getpixel((x, 128)), RED) for x in (3, 60, 196, 252))
    # padding and formerly transparent pixels (the hole) are white, not the black behind the transparency
    assert all(near(out.getpixel((128, y)), WHITE, 4) for y in (3, 50, 128, 206, 252))
    # threshold half-way between red (luma 76) and white so the soft resampled edges cancel out
    reddish = Image.eval(out.convert("L"), lambda v: 255 if v < 165 else 0).getbbox()
    assert all(abs(a - b) <= 2 for a, b in zip(reddish, (0, 64, 256, 192))), reddish


def test_stamp_to_square_keeps_palette_transparency():
    stamp = Image.new("P", (10, 20), 0)
    stamp.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    stamp.paste(1, (2, 0, 8, 20))  # blue 6x20 bar; index 0 (black) is transparent
    stamp.info["transparency"] = 0
    out = stamp_to_square(stamp)
    assert near(out.getpixel((5, 128)), WHITE, 4) and near(out.getpixel((128, 128)), BLUE)
