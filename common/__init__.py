"""Shared code for the task scripts: data, models, training loop, results."""
