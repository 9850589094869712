"""Augmentation: reproducible under a seed, presets and declared pipelines, random erasing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnitune.core.base.errors import RecipeError
from omnitune.core.base.recipe import validate_recipe
from omnitune.vision.augment import PRESETS, Augmenter
from omnitune.vision.data import ImageDataset

from .test_data import make_task

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture
def photo() -> np.ndarray:
    # Structured (not flat) content so that crops, flips and colour changes all show.
    y, x = np.mgrid[0:50, 0:60]
    return np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_are_reproducible_under_a_seed_and_sized(preset, photo):
    aug = Augmenter(preset, train=True, size=32, mean=MEAN, std=STD)
    a, b = aug(photo, seed=7), aug(photo, seed=7)
    assert a.shape == (3, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    if preset != "none":  # the random presets differ under another seed
        assert any(not np.array_equal(a, aug(photo, seed=s)) for s in range(8, 12))


def test_eval_pipeline_is_deterministic_and_normalised_with_the_model_stats(photo):
    aug = Augmenter("light", train=False, size=32, mean=MEAN, std=STD, crop_pct=1.0)
    out = aug(photo, seed=1)
    np.testing.assert_array_equal(out, aug(photo, seed=2))
    grey = np.full((40, 40, 3), 128, np.uint8)  # (128/255 - 0.5) / 0.25
    np.testing.assert_allclose(aug(grey, 0), np.full((3, 32, 32), (128 / 255 - 0.5) / 0.25), atol=1e-5)


def test_declared_pipeline_runs_in_order_and_is_resized_to_the_input(photo):
    steps = [{"name": "HorizontalFlip", "p": 1.0}]
    out = Augmenter(steps, train=True, size=50, mean=(0, 0, 0), std=(1 / 255,) * 3)(photo, 0)
    # A full flip of the 50x60 image, then the always-appended resize/centre crop to 50x50.
    expected = photo[:, ::-1][:, 5:55].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_random_erasing_erases_a_rectangle(photo):
    plain = Augmenter("none", train=True, size=48, mean=MEAN, std=STD, crop_pct=1.0)
    erased = Augmenter("none", train=True, size=48, mean=MEAN, std=STD, crop_pct=1.0, random_erasing=1.0)
    diff = np.any(plain(photo, 3) != erased(photo, 3), axis=0)
    rows, cols = np.nonzero(diff)
    assert 0.01 < diff.mean() < 0.4
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert diff.sum() > 0.9 * box  # the changed pixels fill one rectangle


def test_training_items_are_a_function_of_seed_epoch_and_index(image_folder):
    bundle = make_task(image_folder, augment={"train": "heavy"}, random_erasing=0.5).build_datasets()

    def epoch(n, torch_seed):
        bundle.train.set_epoch(n)
        torch.manual_seed(torch_seed)  # the global RNG plays no part
        return np.stack([bundle.train[i]["pixel_values"] for i in range(len(bundle.train))])

    np.testing.assert_array_equal(epoch(1, torch_seed=1), epoch(1, torch_seed=2))
    assert not np.array_equal(epoch(1, torch_seed=1), epoch(2, torch_seed=1))
    other_seed = ImageDataset(bundle.train.records, bundle.train.augment, train=True, seed=bundle.train.seed + 1)
    other_seed.set_epoch(1)
    assert not np.array_equal(epoch(1, torch_seed=1)[0], other_seed[0]["pixel_values"])
    # Evaluation items neither depend on nor consume the RNG.
    torch.manual_seed(5)
    v1 = bundle.validation[0]["pixel_values"]
    state = torch.get_rng_state()
    torch.manual_seed(6)
    np.testing.assert_array_equal(v1, bundle.validation[0]["pixel_values"])
    torch.manual_seed(5)
    _ = bundle.validation[0]
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("augment, message", [
    ({"train": "extreme"}, "data.augment.train.*unknown preset 'extreme'"),
    ({"train": [{"name": "NoSuchTransform"}]}, "data.augment.train.*NoSuchTransform"),
    ({"train": [{"name": "HorizontalFlip", "bogus": 1}]}, "data.augment.train.*HorizontalFlip"),
    ({"eval": "heavy"}, "data.augment.eval.*presets are for training"),
])
def test_bad_pipelines_are_recipe_errors_naming_the_field(augment, message):
    raw = {"name": "x", "task": "image-classification", "model": {"name": "test_resnet"},
           "data": {"source": "somewhere", "augment": augment}}
    with pytest.raises(RecipeError, match=message):
        validate_recipe(raw)
