"""Ask a trained run about new images: top-k classes per image, and the report's table on labelled folders.

RUN_DIR is any task's output folder (results/task2_shallow, results/reproduce/task1_efficientnet/rep0/fold0, ...).
The model is rebuilt from its config.json and best.pt (--checkpoint last: the final weights, those
metrics.json reports). RUN_DIR may also be a cross-validated repetition's folder, which holds the
fold runs fold0, fold1, ... (results/reproduce/task2_shallow/rep0): the ensemble of the fold models
predicts, each image's class probabilities averaged over them. PATH is an image or a folder, searched
recursively. A folder with one sub-folder per class of the run is also scored: logloss, top-1, top-3
and a confusion matrix (a picture in --pictures DIR, else beside --out, else none).

typical commands:
  python predict.py results/task2_shallow photo.jpg
  python predict.py results/task2_shallow data/demo_split/test --checkpoint last   # = metrics.json's test row
  python predict.py results/task2_shallow data/demo_split/test --pictures results/pictures  # + its confusion matrix
  python predict.py results/task1_efficientnet ~/new_photos --top 1 --out predictions.csv
  python predict.py results/reproduce/task2_shallow/rep0 ~/new_photos   # the ensemble of the fold runs
"""
import argparse
import csv
import dataclasses
import io
import os
import reprlib
from pathlib import Path
from typing import NamedTuple

import torch

import tasks
from common import results
from common.features import extract_features
from common.checkpoint import read_checkpoint
from common.cli import run_main
from common.errors import UserError, shown, warn
from common.config import MAX_BATCH, RunConfig, declared, is_bool, misfit
from common.ensemble import check_alike, combined, run_folders
from common.cache import check_cache_outside
from common.data import (IMAGE_EXTENSIONS, Split, class_folders, decode_images, decoded_cache, has_image_extension,
                         list_images, sub_folders)
from common.files import atomic_write
from common.paths import is_inside
from common.reuse import read_config
from common.run_folder import check_folder_writable, make_folder
from common.runtime import PRECISIONS, CompiledOrEager, pick_compile, pick_device, pick_precision
from common.task import Task
from common.train import Run, evaluate


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
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out file and confusion-matrix pictures (default: refuse)")
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

MISSING = object()  # a field config.json lacks


def is_class_list(value):
    return (isinstance(value, list) and len(value) >= 2 and all(isinstance(c, str) and c for c in value)
            and len(set(value)) == len(value))


# What predicting reads from config.json beyond the settings -> (check, what it must be), so that a
# hand-edited file is one line, not a traceback deep inside. Each task adds its own (Task.saved_fields);
# the settings ("arguments") are checked as their declarations say (saved_settings).
CONFIG_FIELDS = {
    "task": (lambda v: isinstance(v, str) and tasks.SCRIPT_NAME.fullmatch(v), "a task script's name, task<N>_<name>"),
    "classes": (is_class_list, "a list of 2 or more distinct class names"),
    "precision": (lambda v: v in ("fp32", "bf16"), "fp32 or bf16"),
    "compiled": (is_bool, "true or false"),
}


def config_field(config, name):
    """config["a"]["b"] for the name "a.b"; MISSING where there is no such field."""
    for key in name.split("."):
        config = config.get(key, MISSING) if isinstance(config, dict) else MISSING
    return config


def older_version(file, field):
    """A field this version reads is missing: the run is older than the field (or the file was edited)."""
    return UserError(f"{shown(file)} was written by an older version of this project (it has no {field!r} "
                     "field), or edited: train the run again with --force to predict with it here")


def check_fields(config, fields, file):
    for name, (fits, expected) in fields.items():
        value = config_field(config, name)
        if value is MISSING:
            raise older_version(file, name)
        if not fits(value):
            raise edited(file, name, value, expected)


def edited(file, name, value, expected):
    return UserError(f"{shown(file)} was not written by this project (or was edited): {name} is "
                     f"{reprlib.repr(value)}, expected {expected}")  # reprlib: a huge value stays short


def saved_settings(arguments, options, file, may_predate=False):
    """config.json's "arguments" of the dataclass `options` (common.config.declared), each of its type
    and in range, by name. may_predate: a setting with a default that the file lacks keeps its default."""
    values = {}
    for f, kind, optional in declared(options):
        value = arguments.get(f.name, MISSING)
        if value is MISSING:
            if may_predate and f.default is not dataclasses.MISSING:
                continue
            raise older_version(file, f"arguments.{f.name}")
        expected = misfit(f, kind, optional, value)
        if expected:
            raise edited(file, f"arguments.{f.name}", value, expected)
        values[f.name] = Path(value) if kind is Path and value is not None else value
    return values


def read_as_made(saved, task):
    """An older run's config.json with the fields added since where their value is certain: task 1
    could only freeze its backbone before --finetune (and "finetuned") came."""
    if "finetuned" in task.saved_fields and "finetuned" not in saved:
        declared_defaults = task.options()  # what the options added with --finetune default to: frozen
        saved["finetuned"] = False
        saved["arguments"] = {"finetune": declared_defaults.finetune,
                              "backbone_lr_factor": declared_defaults.backbone_lr_factor, **saved["arguments"]}


def task_of(saved, file):
    """The task whose script wrote the run: a run whose script is gone is one line saying so."""
    name = saved["task"]
    try:
        return tasks.load(name)
    except tasks.UnknownTask:
        raise UserError(f"{shown(file)} is a run of {name}, whose script {name}.py is no longer here: "
                        f"put it back to predict with this run") from None


def run_config(run_dir, batch_size=None):
    """(task, its RunConfig, config.json) of a run, every field predicting reads checked (a hand-edited
    or foreign one is one error, not a KeyError deep inside), the task's options as on its command
    line (a task 3 model must fit in memory for batches of `batch_size`, default the run's)."""
    file = run_dir / "config.json"
    try:
        saved = read_config(run_dir)
    except UserError:
        raise UserError(f"{shown(file)} is unreadable or was not written by this project") from None
    if saved is None:
        raise UserError(f"{shown(run_dir)} holds no config.json: not a run folder of this project, nor a "
                        "cross-validated repetition's (with fold runs fold0, fold1, ...)")
    check_fields(saved, CONFIG_FIELDS, file)
    task = task_of(saved, file)
    read_as_made(saved, task)
    check_fields(saved, task.saved_fields, file)
    config = task.config(**saved_settings(saved["arguments"], RunConfig, file, may_predate=True),
                         **saved_settings(saved["arguments"], task.options, file))
    try:
        return task, task.checked(config.replace(batch_size=batch_size or config.batch_size)), saved
    except UserError as e:
        raise UserError(f"{shown(file)}: {e}") from None


def checkpoint_weights(run_dir, checkpoint):
    path = run_dir / f"{checkpoint}.pt"
    if not path.is_file():
        raise UserError(f"{shown(run_dir)} holds no {path.name}: not a finished run (or pick --checkpoint "
                        f"{'last' if checkpoint == 'best' else 'best'})")
    try:
        state = read_checkpoint(path)
    except ValueError as e:
        raise UserError(f"{shown(path)} {e}: refused; train the run again (--force)") from None
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{shown(path)} holds no model weights")
    return weights


class SavedRun(NamedTuple):
    """A finished run as read from its folder, checked, before its model is built."""
    folder: Path
    task: Task
    config: RunConfig
    saved: dict  # its config.json
    weights: dict  # its checkpoint's


def read_runs(args):
    """The SavedRun of RUN_DIR, or of each of its fold runs, all checked before any work is done."""
    runs = []
    for folder in run_folders(args.run_dir):
        task, config, saved = run_config(folder, args.batch_size)
        runs.append(SavedRun(folder, task, config, saved, checkpoint_weights(folder, args.checkpoint)))
    check_alike([(run.folder, run.task.name, run.saved["classes"]) for run in runs])
    if args.weights is not None and runs[0].task.input_network is None:
        warn(f"--weights {shown(args.weights)} is not used: a {runs[0].task.name} run's checkpoint holds its "
             "whole model")
    return runs


def rebuild_model(task, config, saved, weights_file):
    """(the network making the model's inputs from images or None, the model) for the run's task, with
    the run's classes and options."""
    model = task.build_model(config, len(saved["classes"]))
    if task.input_network is None:
        return None, model
    return task.input_network(saved, weights_file), model


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


def confusion_pictures(sets, args):
    """Labelled folder -> where its confusion matrix goes: PREFIX-FOLDER-confusion.png in the
    picture folder (FOLDER-2-... for a second folder of that name), checked before any work is done."""
    labelled = [folder for folder, _ in sets if folder is not None]
    place, prefix = picture_place(args)
    if not labelled or place is None:
        return {}
    for path in args.paths:
        if path.is_dir() and is_inside(place, path):
            raise UserError(f"confusion-matrix pictures in {shown(place)} would lie inside {shown(path)}, to be read "
                            "as images the next time; give --pictures another folder")
    pictures, taken = {}, {args.out}  # a picture never takes --out's name
    for folder in labelled:
        base, n = folder.resolve().name or "images", 1
        picture = place / f"{prefix}{base}-confusion.png"
        while picture in taken:  # a second folder of that name
            n += 1
            picture = place / f"{prefix}{base}-{n}-confusion.png"
        check_new_file(picture, "the confusion-matrix picture", args.force)
        pictures[folder] = picture
        taken.add(picture)
    return pictures


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


def model_for(args, saved_run):
    """The run's model with its checkpoint's weights, ready on the device, and the Run to predict with:
    the run's batch size and precision (unless given), compiled where the run was, so its numbers repeat."""
    task, config, saved = saved_run.task, saved_run.config, saved_run.saved
    backbone, model = rebuild_model(task, config, saved, args.weights)
    try:
        model.load_state_dict(saved_run.weights)
    except RuntimeError as e:
        raise UserError(f"{shown(saved_run.folder / (args.checkpoint + '.pt'))} does not fit the run's {task.name} "
                        f"model ({str(e).splitlines()[0][:160]})") from None
    device = pick_device(args.device)
    run = Run(config, data=None, device=device, precision=pick_precision(args.precision or saved["precision"], device),
              compiled=saved["compiled"] and pick_compile("auto", device))
    model.to(device, memory_format=torch.channels_last)
    # compiled kernels round as in training; where compiling fails here, one warning and eager mode
    forward = CompiledOrEager(model, "auto", on_fallback=lambda error: None) if run.compiled else model
    return backbone, model, forward, run


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
    """[(folder, items, labels, metrics, N x C log-probabilities)] of each set with images that decode:
    the run's prediction, or the ensemble's of the fold runs, whose models are built one after another."""
    decoded = decoded_sets(sets)
    outputs = [[] for _ in decoded]
    for saved_run in runs:
        backbone, model, forward, run = model_for(args, saved_run)
        for output, (_, _, images, labels) in zip(outputs, decoded):
            output.append(predict(backbone, model, forward, images, labels, run))
    return [(folder, items, labels, *combined(output, labels))
            for (folder, items, _, labels), output in zip(decoded, outputs)]


def main(argv=None):
    args = parse_args(argv)
    check_cache_outside(*args.paths)
    runs = read_runs(args)
    saved, classes = runs[0].saved, runs[0].saved["classes"]
    title = saved.get("title", runs[0].task.name) + (f", ensemble of {len(runs)} fold runs" if len(runs) > 1 else "")
    sets = images_to_predict(args.paths, classes)
    pictures = confusion_pictures(sets, args)  # every check before any image is predicted
    rows, scores = [], {}
    for folder, items, labels, metrics, log_probs in predicted_sets(args, runs, sets):
        rows += print_predictions(items, log_probs, classes, min(args.top, len(classes)))
        if folder is not None:
            scores[folder] = metrics
            score(metrics, labels, log_probs, classes, folder, title, pictures.get(folder))
    if scores and not pictures:
        print("\nno confusion-matrix picture written: --pictures DIR (or --out FILE) writes one per labelled folder")
    if args.out:
        write_csv(args.out, rows)
    return scores  # labelled folder -> logloss, top-1, top-3


if __name__ == "__main__":
    run_main(main)
