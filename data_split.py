"""Split a folder of class sub-folders into train / validation / test folders that ImageFolder reads.

SRC holds one sub-folder per class. DEST gets train/, validation/ and test/, each with every
class folder, plus the manifest DEST/split.csv (path, source, class, split, sha256). The split is
stratified per class and shuffled with --seed, so the same seed gives the same split anywhere.
SRC is only read: images are copied (or hard-linked with --link), never moved.

With --folds K (2 or more) DEST gets K cross-validation folds instead: DEST/fold0 ... DEST/fold{K-1},
each such a split folder with its own split.csv. Fold i tests the i-th of K stratified parts of the
images, so every image is a test image exactly once over the folds; its validation is 10 % of all
images, drawn per class from the other parts, and train the rest (70 / 10 / 20 % with K = 5). Once
every fold is complete DEST/folds.csv lists each image's fold (source, class, sha256, fold, k, seed).

typical commands:
  python data_split.py                                 # demo_data/images -> data/demo_split
  python data_split.py --cub CUB_200_2011.tgz          # the report's 7 CUB classes -> data/cub_split
  python data_split.py SRC DEST --ratios 0.7 0.1 0.2   # your images, split as the report's code did
  python data_split.py SRC DEST --folds 5              # 5 folds, DEST/fold0 ... DEST/fold4
"""
import argparse
import functools
import tempfile
from pathlib import Path

from common.cli import UserError, run_main
from common.paths import CUB_SPLIT, DEMO_IMAGES, DEMO_SPLIT, REPO
from common.cub import CUB_CLASSES, cub_images, has_cub_classes
from common.folds import MAX_FOLDS, check_folds, split_folds
from common.split import DEFAULT_RATIOS, split_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(
        usage="%(prog)s [options] [SRC DEST]\n       %(prog)s --cub PATH [options] [DEST]",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", metavar="SRC DEST",
                        help=f"folder with one sub-folder per class, and the output folder "
                             f"(default: {DEMO_IMAGES.relative_to(REPO)} {DEMO_SPLIT.relative_to(REPO)}); "
                             f"with --cub only DEST (default: {CUB_SPLIT.relative_to(REPO)})")
    parser.add_argument("--ratios", nargs="+", type=float, metavar="R",  # None: not given, which --folds needs
                        help="train, validation and test fractions, summing to 1 (default: 0.7 0.2 0.1 as the "
                             "report's text says; 0.7 0.1 0.2 is what its code did: the report's sizes, 291 / 42 / 84 "
                             "CUB images, not its images, since each class is shuffled by --seed)")
    parser.add_argument("--folds", type=int, default=1, metavar="K",
                        help=f"K cross-validation folds, 2 to {MAX_FOLDS}, into DEST/fold0 ... DEST/fold{{K-1}}: each "
                             "image is a test image in one fold; validation is 10 %% of the images, train the rest "
                             "(70 / 10 / 20 %% with 5 folds), so --ratios does not go with it; every class needs K "
                             "images (default: 1, a single split by --ratios)")
    parser.add_argument("--seed", type=int, default=0,
                        help="shuffling seed; the same seed gives the same split, or the same folds (default: 0; "
                             f"with --folds 0 to {2**32 - 1})")
    parser.add_argument("--link", action="store_true",
                        help="hard-link images instead of copying them (symbolic links where hard links fail)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty DEST, replacing only the files its previous split.csv lists "
                             "(with --folds: its previous folds, listed by each fold's split.csv)")
    parser.add_argument("--dry-run", action="store_true", help="check the images and print the counts, write nothing")
    parser.add_argument("--cub", metavar="PATH",
                        help="split the report's 7 CUB-200-2011 classes, from the CUB_200_2011 folder "
                             "or its .tgz archive")
    parser.add_argument("--work", metavar="DIR",
                        help="where --cub extracts those classes from an archive, kept as a cache for later runs "
                             "(default: cub_7classes next to DEST)")
    args = parser.parse_args(argv)

    check_folds(args.folds, args.seed)
    if args.folds > 1 and args.ratios is not None:
        raise UserError("--folds and --ratios do not go together: the folds fix the proportions (test 1/K of the "
                        "images in each fold, validation 10 %, train the rest)")
    if args.folds > 1:
        make = functools.partial(split_folds, folds=args.folds)
    else:
        make = functools.partial(split_dataset, ratios=args.ratios or DEFAULT_RATIOS)
    options = dict(seed=args.seed, link=args.link, force=args.force, dry_run=args.dry_run)
    if not args.cub:
        if len(args.paths) not in (0, 2):
            raise UserError("give both SRC and DEST, or neither to split the demo set")
        src, dest = map(Path, args.paths) if args.paths else (DEMO_IMAGES, DEMO_SPLIT)
        make(src, dest, **options)
        return
    if len(args.paths) > 1:
        raise UserError("with --cub give only DEST")
    dest = Path(args.paths[0]) if args.paths else CUB_SPLIT
    work = Path(args.work) if args.work else dest.parent / "cub_7classes"
    with tempfile.TemporaryDirectory() as scratch:
        if args.dry_run and not has_cub_classes(work):
            work = Path(scratch) / work.name  # a dry run leaves no files behind
        make(cub_images(Path(args.cub), work), dest, classes=CUB_CLASSES, **options)


if __name__ == "__main__":
    run_main(main)
