"""A finished run read back from its folder: config.json's fields checked (a hand-edited or foreign
file is one line, not a traceback deep inside), the task's model rebuilt and its checkpoint loaded.
predict.py predicts with it and REPORT.md's Grad-CAM figures explain its mistakes; which Task wrote a
run the scripts say (task_of), since common/ knows no task script."""
import dataclasses
import reprlib
from pathlib import Path
from typing import NamedTuple

import torch

from common.checkpoint import read_checkpoint
from common.config import RunConfig, declared, is_bool, misfit
from common.errors import UserError, shown
from common.paths import SCRIPT_NAME
from common.reuse import read_config
from common.runtime import CompiledOrEager, pick_compile, pick_device, pick_precision
from common.task import Task
from common.train import Run

MISSING = object()  # a field config.json lacks


def is_class_list(value):
    return (isinstance(value, list) and len(value) >= 2 and all(isinstance(c, str) and c for c in value)
            and len(set(value)) == len(value))


# What predicting reads from config.json beyond the settings -> (check, what it must be), so that a
# hand-edited file is one line, not a traceback deep inside. Each task adds its own (Task.saved_fields);
# the settings ("arguments") are checked as their declarations say (saved_settings).
CONFIG_FIELDS = {
    "task": (lambda v: isinstance(v, str) and SCRIPT_NAME.fullmatch(v), "a task script's name, task<N>_<name>"),
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


def run_config(run_dir, task_of, batch_size=None):
    """(task, its RunConfig, config.json) of a run, every field predicting reads checked (a hand-edited
    or foreign one is one error, not a KeyError deep inside), the task's options as on its command
    line (a task 3 model must fit in memory for batches of `batch_size`, default the run's).
    task_of(config.json, its path): the Task whose script wrote the run (the scripts know them)."""
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
    checkpoint: Path  # the file they came from


def read_run(folder, task_of, checkpoint="best", batch_size=None):
    """The SavedRun of a run folder, checked (see run_config); checkpoint: best or last."""
    task, config, saved = run_config(folder, task_of, batch_size)
    return SavedRun(folder, task, config, saved, checkpoint_weights(folder, checkpoint), folder / f"{checkpoint}.pt")


def rebuild_model(task, config, saved, weights_file):
    """(the network making the model's inputs from images or None, the model) for the run's task, with
    the run's classes and options."""
    model = task.build_model(config, len(saved["classes"]))
    if task.input_network is None:
        return None, model
    return task.input_network(saved, weights_file), model


def model_for(saved_run, weights_file=None, device="auto", precision=None):
    """(backbone or None, the run's model with its checkpoint's weights ready on the device, its forward,
    the Run to predict with): the run's batch size and precision (unless given), compiled where the run
    was, so its numbers repeat. weights_file: task 1's backbone weights, where they moved since."""
    task, config, saved = saved_run.task, saved_run.config, saved_run.saved
    backbone, model = rebuild_model(task, config, saved, weights_file)
    try:
        model.load_state_dict(saved_run.weights)
    except RuntimeError as e:
        raise UserError(f"{shown(saved_run.checkpoint)} does not fit the run's {task.name} "
                        f"model ({str(e).splitlines()[0][:160]})") from None
    device = pick_device(device)
    run = Run(config, data=None, device=device, precision=pick_precision(precision or saved["precision"], device),
              compiled=saved["compiled"] and pick_compile("auto", device))
    model.to(device, memory_format=torch.channels_last)
    # compiled kernels round as in training; where compiling fails here, one warning and eager mode
    forward = CompiledOrEager(model, "auto", on_fallback=lambda error: None) if run.compiled else model
    return backbone, model, forward, run


def image_model(backbone, model):
    """What maps images to class scores: the model, or for a frozen task 1 run, which trained its head on
    the backbone's features, the backbone followed by the head."""
    return model if backbone is None else torch.nn.Sequential(backbone, model)


def image_model_of(task, folder):
    """The finished run's model from images to class scores with its final weights (last.pt, which made
    its test predictions), on the CPU in fp32: what REPORT.md's Grad-CAM explains. task: the Task that
    trained it."""
    saved_run = read_run(folder, lambda saved, file: task, checkpoint="last")
    backbone, model, _, _ = model_for(saved_run, device="cpu", precision="fp32")
    return image_model(backbone, model)
