"""common/saved_run.py: a finished run read back as the model that maps images to class scores."""
import pytest
import torch
import torch.nn as nn

import task1_efficientnet
import task2_shallow
from common import results
from common.data import decode_images, decoded_cache
from common.saved_run import image_model_of, read_run
from conftest import make_split


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("saved_run") / "data", counts=(4, 2, 2))


def train(task, data, out, *argv):
    task.main(["--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "4", "--precision", "fp32",
               "--no-tensorboard", *argv])
    return out


def test_the_image_model_is_the_final_one_that_made_the_runs_test_predictions(data, tmp_path):
    run = train(task2_shallow, data, tmp_path / "run", "--compile", "off")
    paths, _, _, probabilities, _ = results.read_predictions(run)
    images, kept, _ = decode_images(paths, decoded_cache())
    model = image_model_of(task2_shallow.TASK, run)
    with torch.no_grad():
        assert torch.allclose(model.eval()(images[:]).exp(), torch.as_tensor(probabilities, dtype=torch.float32), atol=1e-5)
    assert read_run(run, lambda saved, file: task2_shallow.TASK).checkpoint == run / "best.pt"  # predict.py's default


def test_a_frozen_task1_run_is_its_backbone_followed_by_its_head(data, tmp_path):
    run = train(task1_efficientnet, data, tmp_path / "run")
    model = image_model_of(task1_efficientnet.TASK, run)
    assert isinstance(model, nn.Sequential) and isinstance(model[1][0], nn.Linear)
    paths, _, _, probabilities, _ = results.read_predictions(run)
    images, _, _ = decode_images(paths, decoded_cache())
    with torch.no_grad():
        assert torch.allclose(model.eval()(images[:]).exp(), torch.as_tensor(probabilities, dtype=torch.float32),
                              atol=1e-4)
