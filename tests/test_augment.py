
import pytest
import torch
import torch.nn as nn

from common.augment import VIEWS, augment_batch, train_augmentation
from common.features import run_backbone
from common.cli import UserError
from common.data import CROP, Split, model_input, normalize
from common.reuse import run_or_reuse
from common.run import train_and_report
from conftest import start_test_run
from test_run_folder import ctrl_c_at_epoch
from test_train import TINY, run, tiny_config, tiny_model


SPLIT_COUNTS = (4, 2, 2)  # images per class in the data fixture's train, validation and test


def images(n=6, seed=0):
    return torch.randint(0, 256, (n, 3, CROP, CROP), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_each_image_gets_its_own_crop_and_flip_of_the_same_size():
    batch = images()
    torch.manual_seed(0)
    out = augment_batch(batch, train_augmentation(CROP))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert not any(torch.equal(out[i], batch[i]) for i in range(len(batch)))
    assert not torch.equal(out[0], out[1])  # not one crop for the whole batch


class Pixels(nn.Flatten):
    """A stand-in backbone whose features are the normalised pixels themselves (backbones take uint8 images)."""
    name = "pixels"

    def forward(self, images):
        return super().forward(model_input(images))


def test_augmented_views_follow_the_seed_whatever_the_batch_size_and_leave_the_run_generator_alone():
    batch = images()
    torch.manual_seed(7)
    state = torch.get_rng_state()
    a, b, c = (run_backbone(Pixels(), batch, size, "fp32", torch.device("cpu"), augment_seed=seed)
               for size, seed in ((2, 1), (3, 1), (2, 2)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = run_backbone(Pixels(), batch, 2, "fp32", torch.device("cpu"))
    assert torch.equal(plain, normalize(batch).flatten(1)) and not torch.equal(a, plain)
    assert torch.equal(torch.get_rng_state(), state)


def test_views_split_draws_one_view_per_sample_with_the_generator():
    views = [(torch.arange(5) * 10 + view).float()[:, None] for view in range(VIEWS)]  # sample*10 + view
    split = Split(views, torch.arange(5), [], [], views=True)
    first = [x for x, _ in split.batches(2, torch.Generator().manual_seed(0))]
    again = [x for x, _ in split.batches(2, torch.Generator().manual_seed(0))]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    drawn = torch.cat(first).squeeze(1)
    assert sorted((drawn // 10).tolist()) == list(range(5))  # every sample once
    assert len(set((drawn % 10).tolist())) > 1  # not always the same view


class Recorder(nn.Module):
    """The tiny model, noting every input batch it sees in training and in evaluation mode."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, {True: [], False: []}

    def forward(self, x):
        self.seen[self.training].append(x.detach().clone())
        return self.model(x)


def recorded_run(data, out, *argv):
    r = start_test_run(["--data", str(data), "--out", str(out), "--precision", "fp32", "--compile", "off", *argv],
                       epochs=2, compiles=True)
    model = Recorder(tiny_model(len(r.data.classes)))
    train_and_report(model, r, "tiny")
    return model.seen, r.data


def as_set(batches):
    return {tuple(x.flatten()[:50].tolist()) for batch in batches for x in batch}


def test_augment_changes_training_batches_never_evaluation_inputs(data, tmp_path):
    plain, split_data = recorded_run(data, tmp_path / "plain")
    augmented, _ = recorded_run(data, tmp_path / "aug", "--augment")
    cached = as_set([split.inputs[:] for split in split_data.splits().values()])  # models get uint8 images
    assert as_set(plain[True]) <= cached and as_set(plain[False]) <= cached
    assert as_set(augmented[False]) == as_set(plain[False])  # evaluation: the report's preprocessing
    assert not as_set(augmented[True]) & cached  # training: every image augmented
    again, _ = recorded_run(data, tmp_path / "again", "--augment")
    assert all(torch.equal(a, b) for a, b in zip(again[True], augmented[True]))  # same seed, same batches
    other, _ = recorded_run(data, tmp_path / "other", "--augment", "--seed", "1")
    assert not torch.equal(torch.cat(other[True]), torch.cat(augmented[True]))


def test_an_augmented_run_resumes_into_the_same_stream(data, tmp_path):
    whole = run(data, tmp_path / "whole", "--augment")
    with ctrl_c_at_epoch(2):
        run_or_reuse(TINY, tiny_config(data, tmp_path / "cut", 4, augment=True))
    assert run_or_reuse(TINY, tiny_config(data, tmp_path / "cut", 4, augment=True)) == \
        run_or_reuse(TINY, tiny_config(data, tmp_path / "whole2", 4, augment=True))
    assert whole != run(data, tmp_path / "plain")  # augmentation changed what was learnt


def test_the_resume_key_includes_augment(data, tmp_path):
    run(data, tmp_path / "out", "--epochs", "1")
    with pytest.raises(UserError, match="--augment False in the checkpoint, True now"):
        run(data, tmp_path / "out", "--epochs", "2", "--resume", "--augment")
