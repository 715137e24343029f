"""The demo split that every script uses when given no data: made from the embedded demo images the
first time it is needed."""
from common.data import MANIFEST
from common.paths import DEMO_IMAGES, DEMO_SPLIT
from common.split import split_dataset


def default_data():
    """The demo split, made from the embedded demo images the first time it is needed."""
    if not (DEMO_SPLIT / MANIFEST).exists():
        split_dataset(DEMO_IMAGES, DEMO_SPLIT, force=True)  # force: clears an interrupted demo split
    return DEMO_SPLIT
