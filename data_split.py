"""Split a folder of class sub-folders into train / validation / test folders that ImageFolder reads.

SRC holds one sub-folder per class. DEST gets train/, validation/ and test/, each with every
class folder, plus the manifest DEST/split.csv (path, source, class, split, sha256). The split is
stratified per class and shuffled with --seed, so the same seed gives the same split anywhere.
SRC is only read: images are copied (or hard-linked with --link), never moved.

typical commands:
  python data_split.py                                 # demo_data/images -> data/demo_split
  python data_split.py --cub CUB_200_2011.tgz          # the report's 7 CUB classes -> data/cub_split
  python data_split.py SRC DEST --ratios 0.7 0.1 0.2   # your images, split as the report's code did
"""
import argparse
import tempfile
from pathlib import Path

from common.cli import UserError, run_main
from common.paths import CUB_SPLIT, DEMO_IMAGES, DEMO_SPLIT, REPO
from common.cub import CUB_CLASSES, cub_images, has_cub_classes
from common.split import DEFAULT_RATIOS, split_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(
        usage="%(prog)s [options] [SRC DEST]\n       %(prog)s --cub PATH [options] [DEST]",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", metavar="SRC DEST",
                        help=f"folder with one sub-folder per class, and the output folder "
                             f"(default: {DEMO_IMAGES.relative_to(REPO)} {DEMO_SPLIT.relative_to(REPO)}); "
                             f"with --cub only DEST (default: {CUB_SPLIT.relative_to(REPO)})")
    parser.add_argument("--ratios", nargs="+", type=float, default=DEFAULT_RATIOS, metavar="R",
                        help="train, validation and test fractions, summing to 1 (default: 0.7 0.2 0.1 as the "
                             "report's text says; 0.7 0.1 0.2 is what its code did: 291 / 42 / 84 CUB images)")
    parser.add_argument("--seed", type=int, default=0,
                        help="shuffling seed; the same seed gives the same split (default: 0)")
    parser.add_argument("--link", action="store_true",
                        help="hard-link images instead of copying them (symbolic links where hard links fail)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty DEST, replacing only the files its previous split.csv lists")
    parser.add_argument("--dry-run", action="store_true", help="check the images and print the counts, write nothing")
    parser.add_argument("--cub", metavar="PATH",
                        help="split the report's 7 CUB-200-2011 classes, from the CUB_200_2011 folder "
                             "or its .tgz archive")
    parser.add_argument("--work", metavar="DIR",
                        help="where --cub extracts those classes from an archive, kept as a cache for later runs "
                             "(default: cub_7classes next to DEST)")
    args = parser.parse_args(argv)

    options = dict(ratios=args.ratios, seed=args.seed, link=args.link, force=args.force, dry_run=args.dry_run)
    if not args.cub:
        if len(args.paths) not in (0, 2):
            raise UserError("give both SRC and DEST, or neither to split the demo set")
        src, dest = map(Path, args.paths) if args.paths else (DEMO_IMAGES, DEMO_SPLIT)
        split_dataset(src, dest, **options)
        return
    if len(args.paths) > 1:
        raise UserError("with --cub give only DEST")
    dest = Path(args.paths[0]) if args.paths else CUB_SPLIT
    work = Path(args.work) if args.work else dest.parent / "cub_7classes"
    with tempfile.TemporaryDirectory() as scratch:
        if args.dry_run and not has_cub_classes(work):
            work = Path(scratch) / work.name  # a dry run leaves no files behind
        split_dataset(cub_images(Path(args.cub), work), dest, classes=CUB_CLASSES, **options)


if __name__ == "__main__":
    run_main(main)
