"""Shared code for the task scripts, in layers, each importing only those below it:
- run management (options, run, run_folder, checkpoint, results, reuse, report, split, manifest, cub, demo,
  ensemble) reads the command line and writes;
- the core (data, models, netvlad, backbones, weights, features, augment, train: the loop) does neither;
  transfer is task 1's shared part;
- foundations: errors, paths, files, config, task, runtime, distributed, cli, baseline. Nothing here imports a script
  or bench/.
"""
import importlib
import sys


def import_compile_stack():
    """Import torch._dynamo (torchvision imports it too) before anything else, where its one failure
    of the environment can be said in one line: on import it creates torch's compile cache folder
    ($TORCHINDUCTOR_CACHE_DIR), and a file in that place raised FileExistsError deep in torchvision."""
    try:
        importlib.import_module("torch._dynamo")
    except OSError as e:
        print(f"error: torch cannot use {e.filename or '?'} as its compile cache folder ({e.strerror or e}): "
              "point TORCHINDUCTOR_CACHE_DIR at a writable folder, or unset it", file=sys.stderr)
        sys.exit(2)


import_compile_stack()  # first: torch's compile stack fails on import where its cache folder cannot be made
