"""Checkpoints: last.pt holds everything --resume needs, under a key of every setting that changes
the result; it is untrusted input, checked byte by byte and field by field before use."""
import math
import pickle
import zipfile
from pathlib import Path

import torch

from common import distributed
from common.config import is_number
from common.errors import UserError
from common.files import atomic_torch_save
from common.results import HISTORY_FIELDS

# Settings of the experiment (RunConfig.experiment) keyed otherwise: --data and --weights by content
# (data fingerprint, weights fingerprint), so moving a file is no change; the precision as resolved.
KEYED_OTHERWISE = {"precision", "data", "weights"}


def run_key(run, extra):
    """Every setting that changes a run's result; a resumed run must share all of them.

    The task's own options (--clusters, --init, --alpha, --no-pretrained, ...) come in with the
    shared ones; `extra` (Prepared.key) adds what the task knows only after loading (weights fingerprint).
    The number of torchrun processes counts (they draw other dropout masks), named only above 1, so
    the checkpoints of one process made before it was keyed still resume.
    """
    options = {f"--{name.replace('_', '-')}": str(value) if isinstance(value, Path) else value
               for name, value in run.config.experiment().items() if name not in KEYED_OTHERWISE}  # plain data only
    processes = {"torchrun processes": distributed.world()} if distributed.world() > 1 else {}
    return {"task": run.config.task, **options, "--precision": run.precision, "classes": list(run.data.classes),
            "data (image content)": run.data.fingerprint(), **processes, **extra}


def key_differences(saved, now):
    names = [*saved, *(n for n in now if n not in saved)]
    return [f"{name} {saved.get(name, 'unset')} in the checkpoint, {now.get(name, 'unset')} now"
            for name in names if saved.get(name) != now.get(name)]


def save(state, best, out):
    """last.pt (everything --resume needs) and best.pt (the lowest validation loss's weights)."""
    atomic_torch_save(best, out / "best.pt")
    atomic_torch_save(state, out / "last.pt")


CHECKPOINT_TYPES = {"epoch": int, "key": dict, "model": dict, "optimizer": dict, "scheduler": dict,
                    "rng": torch.Tensor, "shuffle_rng": torch.Tensor, "history": list, "best": dict}


def well_formed(state):
    """The plain data that fit() uses directly has the shapes fit() wrote; tensors are checked on loading."""
    epoch, history, best = state.get("epoch"), state.get("history"), state.get("best")
    return (all(isinstance(state.get(k), t) for k, t in CHECKPOINT_TYPES.items())
            and epoch >= 1 and len(history) == epoch
            and all(isinstance(row, dict) and all(is_number(row.get(f)) for f in HISTORY_FIELDS) for row in history)
            and is_number(best.get("loss"))
            and (best["loss"] == math.inf or (isinstance(best.get("epoch"), int) and isinstance(best.get("model"), dict))))


def checkpoint_damage(path):
    """Why the file torch.save wrote at `path` is damaged, or None where every byte is as written.

    torch.save writes a zip archive, which holds a CRC-32 of each member; torch.load never checks
    them, so a flipped byte inside a tensor would load as a silently different weight. Reading the
    whole file once costs little beside loading it: 0.13 s for task 2's 373 MB last.pt, which
    torch.load reads in 0.22 s (2 CPU cores, file in the page cache)."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        return f"not a whole zip archive as torch.save writes: {e}"
    return f"{member} fails its CRC-32 check" if member else None


def read_checkpoint(path):
    """A file torch.save wrote, as plain data: every byte checked first, then loaded with weights_only,
    which refuses any pickled object that could run code. Loaded to the CPU whatever the run's device:
    the RNG states must be CPU tensors, and loading the weights and Adam's state copies them to the
    model's device. A ValueError ends a sentence about the file: what is wrong with it."""
    if not path.is_file():  # reading a FIFO would wait forever
        raise ValueError("is not a regular file")
    damage = checkpoint_damage(path)
    if damage:
        raise ValueError(f"is corrupt or unreadable ({damage})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError("holds objects other than tensors and plain data, so it is not a checkpoint of this "
                         "project and was not loaded") from None
    except Exception as e:  # truncated or garbled files raise RuntimeError, EOFError, OSError, ...
        raise ValueError(f"is corrupt or unreadable ({type(e).__name__})") from None


def load_checkpoint(path):
    """last.pt, checked (read_checkpoint) and holding what fit() wrote, for --resume."""
    start_over = f"start over with --force (it replaces {path.parent})"
    try:
        state = read_checkpoint(path)
    except ValueError as e:
        raise UserError(f"--resume: {path} {e}; {start_over}") from None
    if not isinstance(state, dict) or not well_formed(state):
        raise UserError(f"--resume: {path} is not a checkpoint of this project; {start_over}")
    return state


def check_resumable(state, config, key):
    differences = key_differences(state["key"], key)
    out, epochs = config.out, config.epochs
    if differences:
        raise UserError(f"--resume: {out} was made with other settings: {'; '.join(differences)}")
    if state["epoch"] > epochs:
        raise UserError(f"--resume: {out} has trained {state['epoch']} epochs already, more than --epochs "
                        f"{epochs}: give --epochs {state['epoch']} or more, or --force to start over")
