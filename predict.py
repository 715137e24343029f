"""Ask a trained run about new images: top-k classes per image, and the report's table on labelled folders.

RUN_DIR is any task's output folder (results/task2_shallow, results/reproduce/task1_efficientnet/rep0/fold0, ...).
The model is rebuilt from its config.json and best.pt (--checkpoint last: the final weights, those
metrics.json reports). RUN_DIR may also be a cross-validated repetition's folder, which holds the
fold runs fold0, fold1, ... (results/reproduce/task2_shallow/rep0): the ensemble of the fold models
predicts, each image's class probabilities averaged over them. PATH is an image or a folder, searched
recursively. A folder with one sub-folder per class of the run is also scored: logloss, top-1, top-3
and a confusion matrix (a picture in --pictures DIR, else beside --out, else none). --explain adds,
per image, a picture of where the model found the evidence for the class it predicts (Grad-CAM).

typical commands:
  python predict.py results/task2_shallow photo.jpg
  python predict.py results/task2_shallow data/demo_split/test --checkpoint last   # = metrics.json's test row
  python predict.py results/task2_shallow data/demo_split/test --pictures results/pictures  # + its confusion matrix
  python predict.py results/task1_efficientnet ~/new_photos --top 1 --out predictions.csv
  python predict.py results/reproduce/task2_shallow/rep0 ~/new_photos   # the ensemble of the fold runs
  python predict.py results/task2_shallow photo.jpg --explain --pictures results/explained   # + Grad-CAM
"""
import argparse
import csv
import io
import os
from pathlib import Path

import torch
from tqdm import tqdm

import tasks
from common import results
from common.features import extract_features
from common.cli import run_main
from common.errors import UserError, shown, warn
from common.config import MAX_BATCH
from common.ensemble import check_alike, combined, run_folders
from common.cache import check_cache_outside
from common.data import (IMAGE_EXTENSIONS, Split, class_folders, decode_images, decoded_cache, has_image_extension,
                         list_images, sub_folders)
from common.files import atomic_write
from common.paths import is_inside
from common.run_folder import check_folder_writable, make_folder
from common.runtime import PRECISIONS
from common.gradcam import grad_cam, plot_explanation
from common.saved_run import image_model, model_for, read_run
from common.train import evaluate


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a finished run's folder (holds config.json), or a cross-validated repetition's "
                             "(holds the fold runs fold0, fold1, ...): the ensemble of its fold models predicts")
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders (recursive)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best = lowest validation loss (best.pt); last = the final weights (default: best)")
    parser.add_argument("--top", type=int, default=3, metavar="K", help="classes shown per image (default: 3, "
                                                                        "capped at the number of classes)")
    parser.add_argument("--out", help="also write path, rank, class, probability rows to this new CSV file")
    parser.add_argument("--pictures", type=Path, metavar="DIR",
                        help="write each labelled folder's confusion matrix here, as FOLDER-confusion.png "
                             "(default: beside --out, as OUT-FOLDER-confusion.png; without --out, none)")
    parser.add_argument("--explain", action="store_true",
                        help="also draw, per image, where the model found the evidence for the class it predicts "
                             "(Grad-CAM over its last convolutional layer; a frozen task 1 run's backbone; a fold "
                             "ensemble's mean map) into --pictures DIR as IMAGE-gradcam.png, else beside --out")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out file and pictures (default: refuse)")
    parser.add_argument("--weights", type=Path, help="task 1: the backbone's weight file, if it moved since training")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: the run's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: the run's, so its numbers repeat exactly")
    args = parser.parse_args(argv)
    if args.top < 1:
        raise UserError(f"--top {args.top}: need at least 1")
    if args.batch_size is not None and not 1 <= args.batch_size <= MAX_BATCH:
        raise UserError(f"--batch-size {args.batch_size} is out of range: give 1 to {MAX_BATCH}")
    check_outputs(args)
    return args


def check_outputs(args):
    """--out and --pictures can be written, checked before any work: a refusal after predicting
    every image would lose the work."""
    if args.out is not None:
        if args.out.endswith(("/", os.sep)) or Path(args.out).is_dir():
            raise UserError(f"--out {shown(args.out)} is a folder; give a .csv file name")
        args.out = Path(args.out)
        check_new_file(args.out, "--out", args.force)
        if not args.out.parent.exists():
            raise UserError(f"--out {shown(args.out)}: there is no folder {shown(args.out.parent)}")
        check_folder_writable(args.out.parent, "--out's folder")
    if args.pictures is not None:
        check_folder_writable(args.pictures, "--pictures")  # created when the first picture is written


def check_new_file(path, label, force):
    """Refuse to write over a file unless --force, and over anything but a regular file at all."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(f"{label} {shown(path)} exists and is not a regular file; pick another name")
    if path.exists() and not force:
        raise UserError(f"{label} {shown(path)} exists; --force replaces it, or pick another name")


# --- the model ------------------------------------------------------------------------------

def task_of(saved, file):
    """The task whose script wrote the run: a run whose script is gone is one line saying so."""
    name = saved["task"]
    try:
        return tasks.load(name)
    except tasks.UnknownTask:
        raise UserError(f"{shown(file)} is a run of {name}, whose script {name}.py is no longer here: "
                        f"put it back to predict with this run") from None


def read_runs(args):
    """The SavedRun of RUN_DIR, or of each of its fold runs, all checked before any work is done."""
    runs = [read_run(folder, task_of, args.checkpoint, args.batch_size) for folder in run_folders(args.run_dir)]
    check_alike([(run.folder, run.task.name, run.saved["classes"]) for run in runs])
    if args.weights is not None and runs[0].task.input_network is None:
        warn(f"--weights {shown(args.weights)} is not used: a {runs[0].task.name} run's checkpoint holds its "
             "whole model")
    return runs


# --- the images -----------------------------------------------------------------------------

def named_file(path):
    """A file named on the command line is read as a folder's files are: by its name's extension."""
    if has_image_extension(path.name):
        return True
    warn(f"{shown(path)}: not an image file name ({' '.join(IMAGE_EXTENSIONS)}); left out")
    return False


def images_to_predict(paths, classes):
    """[(name, [(file, label or None)])]: each labelled folder (one with class sub-folders) as its
    own set, in the task scripts' order (common.data.list_images) so that its batches are the run's;
    everything else as one set."""
    sets, loose = [], []
    for path in paths:
        if path.is_file():
            loose += [(str(path), None)] if named_file(path) else []
        elif path.is_dir():
            if not any(p.name in classes for p in sub_folders(path)):  # not a labelled folder
                loose += [(f, None) for f in list_images(path)]
                continue
            folders = class_folders(path)  # refuses a class link that would count images twice
            unknown = [p.name for p in folders if p.name not in classes]
            if unknown:
                warn(f"{shown(path)}: classes the model does not know, skipped: {', '.join(map(shown, unknown))}")
            sets.append((path, [(f, classes.index(p.name)) for p in folders if p.name in classes
                                for f in list_images(p)]))
            outside = list_images(path, recursive=False)
            if outside:  # beside the class folders: predicted, but without a label to score
                warn(f"{shown(path)}: {len(outside)} images outside its class folders are predicted, not scored")
                loose += [(f, None) for f in outside]
        elif path.exists():
            raise UserError(f"{shown(path)}: not a regular file or folder")
        else:
            raise UserError(f"{shown(path)}: no such file or folder")
    sets += [(None, loose)] if loose else []
    if not any(items for _, items in sets):
        raise UserError("no images found in " + ", ".join(map(str, paths)))
    return sets


# --- predicting -----------------------------------------------------------------------------

def predict(backbone, model, forward, images, labels, run):
    """(metrics, N x C log-probabilities), computed as the run computed them: task 1 through
    features extracted in the same batches, then the head in the run's batches."""
    if backbone is not None:
        images = extract_features(backbone, images, precision=run.precision, device=run.device)
    return evaluate(model, Split(images, labels, [], []), run, forward)


def print_predictions(items, log_probs, classes, top):
    """Per image its top classes; returns the CSV rows."""
    rows = []
    probabilities, indices = log_probs.exp().topk(top, dim=1)
    for (path, _), p, i in zip(items, probabilities.tolist(), indices.tolist()):
        print(f"{path}: " + ", ".join(f"{classes[c]} {100 * q:.1f} %" for q, c in zip(p, i)))
        rows += [{"path": path, "rank": r + 1, "class": classes[c], "probability": f"{q:.6f}"}
                 for r, (q, c) in enumerate(zip(p, i))]
    return rows


def write_csv(path, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, ["path", "rank", "class", "probability"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue())
    print(f"wrote {path}")


def picture_place(args):
    """(folder, name prefix) for confusion-matrix pictures: --pictures DIR, else --out's folder with
    --out's name in front; (None, "") when neither is given (none are written)."""
    if args.pictures is not None:
        return args.pictures, ""
    if args.out is not None:
        return args.out.parent, f"{args.out.stem}-"
    return None, ""


MAX_PICTURE_BASE = 100  # characters of an image's or folder's name in its picture's name: file names end at 255 bytes


def picture_files(named, kind, label, args, inputs=()):
    """key -> PLACE/PREFIX-BASE-KIND.png for each (key, BASE) of `named` (BASE-2-... for a second of
    that name, or for a name that is --out or one of the `inputs` being predicted), every one checked
    before any work is done: new, or --force, and not inside a folder being predicted."""
    place, prefix = picture_place(args)
    for path in args.paths:
        if path.is_dir() and is_inside(place, path):
            raise UserError(f"{label}s in {shown(place)} would lie inside {shown(path)}, to be read "
                            "as images the next time; give --pictures another folder")
    pictures, taken = {}, {Path(p).resolve() for p in [*inputs, *([args.out] if args.out else [])]}
    for key, base in named:
        base = base[:MAX_PICTURE_BASE]
        picture, n = place / f"{prefix}{base}-{kind}.png", 1
        while key not in pictures and picture.resolve() in taken:  # a second one of that name, or an input
            n += 1
            picture = place / f"{prefix}{base}-{n}-{kind}.png"
        check_new_file(picture, f"the {label}", args.force)
        pictures.setdefault(key, picture)
        taken.add(picture.resolve())
    return pictures


def confusion_pictures(sets, args):
    """Labelled folder -> where its confusion matrix goes: PREFIX-FOLDER-confusion.png in the picture folder."""
    labelled = [(folder, folder.resolve().name or "images") for folder, _ in sets if folder is not None]
    if not labelled or picture_place(args)[0] is None:
        return {}
    return picture_files(labelled, "confusion", "confusion-matrix picture", args)


def explanation_pictures(sets, args):
    """With --explain, image -> where its Grad-CAM picture goes: PREFIX-IMAGE-gradcam.png in the picture folder."""
    if not args.explain:
        return {}
    if picture_place(args)[0] is None:
        raise UserError("--explain writes a picture per image: give --pictures DIR, or --out FILE to put them beside it")
    images = [path for _, items in sets for path, _ in items]
    return picture_files([(path, Path(path).stem or "image") for path in images], "gradcam", "Grad-CAM picture", args,
                         inputs=images)  # --force never writes over an image being predicted


def score(metrics, labels, log_probs, classes, folder, title, picture):
    """The report's table row for a labelled folder, and its confusion matrix in `picture` (if any)."""
    print(f"\n{title} on {folder}: logloss {metrics['loss']:.4f}, top-1 {metrics['top1']:.2f} %, "
          f"top-3 {metrics['top3']:.2f} % ({len(labels)} images)")
    if picture is None:
        return
    counts = results.confusion_matrix(labels, log_probs.argmax(dim=1), len(classes))
    make_folder(picture.parent, "--pictures")
    results.plot_confusion(picture, counts, classes, f"{title}: confusion matrix on {folder.resolve().name}")
    print(f"wrote {picture}")


def decoded_sets(sets):
    """[(folder, items, images, labels)] of each set with images that decode (0 stands for no label)."""
    decoded = []
    for folder, items in sets:
        images, kept, _ = decode_images([f for f, _ in items], decoded_cache())
        if kept:
            items = [items[i] for i in kept]
            decoded.append((folder, items, images, torch.tensor([label or 0 for _, label in items])))
    if not decoded:
        raise UserError("none of the images can be read (see the warnings above)")
    return decoded


def predicted_sets(args, runs, sets):
    """[(folder, items, images, labels, metrics, N x C log-probabilities)] of each set with images that decode:
    the run's prediction, or the ensemble's of the fold runs, whose models are built one after another."""
    decoded = decoded_sets(sets)
    outputs = [[] for _ in decoded]
    for saved_run in runs:
        backbone, model, forward, run = model_for(saved_run, args.weights, args.device, args.precision)
        for output, (_, _, images, labels) in zip(outputs, decoded):
            output.append(predict(backbone, model, forward, images, labels, run))
    return [(folder, items, images, labels, *combined(output, labels))
            for (folder, items, images, labels), output in zip(decoded, outputs)]


EXPLAINED_AT_ONCE = 256  # images: 51 MB of heat maps, and each model loaded once for them


def mean_grad_cam(runs, args, images, classes, batch_size=16):
    """Grad-CAM heat maps of `images` for `classes`: the run's model's, or the mean of the fold models'."""
    heat = torch.zeros(len(images), *images.shape[-2:])
    for saved_run in runs:  # one model in memory at a time
        backbone, model, _, run = model_for(saved_run, args.weights, args.device, "fp32")
        network = image_model(backbone, model).to(run.device)
        for start in range(0, len(images), batch_size):
            rows = slice(start, start + batch_size)
            heat[rows] += grad_cam(network, images[rows].to(run.device), classes[rows].to(run.device)).cpu()
    return heat / len(runs)


def write_explanations(args, runs, predicted, pictures, classes):
    """Each image's Grad-CAM picture: where the model found the evidence for the class it predicts.
    EXPLAINED_AT_ONCE images at a time: their heat maps in memory, the models loaded once for them."""
    make_folder(picture_place(args)[0], "--pictures")
    for _, items, images, _, _, log_probs in predicted:  # the images as they were predicted, not read again
        probability, top = log_probs.exp().max(dim=1)
        with tqdm(total=len(items), desc="Grad-CAM pictures", unit="img", disable=None) as progress:
            for start in range(0, len(items), EXPLAINED_AT_ONCE):
                rows = slice(start, start + EXPLAINED_AT_ONCE)
                batch = images[rows]
                heat = mean_grad_cam(runs, args, batch, top[rows])
                for i, (path, label) in enumerate(items[rows], start):
                    caption = f"predicted {classes[top[i]]} ({100 * probability[i]:.0f} %)" + \
                              (f", true {classes[label]}" if label is not None else "")
                    plot_explanation(pictures[path], batch[i - start], heat[i - start], f"{shown(path)}\n{caption}")
                    progress.update()
        print(f"wrote {len(items)} Grad-CAM pictures" + (" (the mean of the fold models' maps)" if len(runs) > 1 else "")
              + f", e.g. {pictures[items[0][0]]}")


def main(argv=None):
    args = parse_args(argv)
    check_cache_outside(*args.paths)
    runs = read_runs(args)
    saved, classes = runs[0].saved, runs[0].saved["classes"]
    title = saved.get("title", runs[0].task.name) + (f", ensemble of {len(runs)} fold runs" if len(runs) > 1 else "")
    sets = images_to_predict(args.paths, classes)
    pictures = confusion_pictures(sets, args)  # every check before any image is predicted
    explanations = explanation_pictures(sets, args)
    rows, scores = [], {}
    predicted = predicted_sets(args, runs, sets)
    for folder, items, _, labels, metrics, log_probs in predicted:
        rows += print_predictions(items, log_probs, classes, min(args.top, len(classes)))
        if folder is not None:
            scores[folder] = metrics
            score(metrics, labels, log_probs, classes, folder, title, pictures.get(folder))
    if scores and not pictures:
        print("\nno confusion-matrix picture written: --pictures DIR (or --out FILE) writes one per labelled folder")
    if args.out:
        write_csv(args.out, rows)
    if explanations:
        write_explanations(args, runs, predicted, explanations, classes)
    return scores  # labelled folder -> logloss, top-1, top-3


if __name__ == "__main__":
    run_main(main)
