"""Shared code for the task scripts: data, models, training loop, results."""
from common.cli import import_compile_stack

import_compile_stack()  # first: torch's compile stack fails on import where its cache folder cannot be made
