"""The demo data that every script uses when given none: the demo split, or the demo images in K
folds, made from the embedded demo images the first time they are needed."""
from common.data import MANIFEST
from common.paths import DEMO_IMAGES, DEMO_SPLIT
from common.folds import FOLDS, fold_folders, split_folds
from common.split import split_dataset


def default_data():
    """The demo split, made from the embedded demo images the first time it is needed."""
    if not (DEMO_SPLIT / MANIFEST).exists():
        split_dataset(DEMO_IMAGES, DEMO_SPLIT, force=True)  # force: clears an interrupted demo split
    return DEMO_SPLIT


def default_folds(folds):
    """The demo images' fold folders (data/demo_folds<K>, drawn by seed 0), made the first time they are needed."""
    folder = DEMO_SPLIT.parent / f"demo_folds{folds}"
    if not (folder / FOLDS).exists():
        split_folds(DEMO_IMAGES, folder, folds, force=True)  # force: clears an interrupted set
    return fold_folders(folder, f"delete {folder} to draw them again")
