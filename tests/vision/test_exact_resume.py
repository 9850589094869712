"""Exact resume for vision: augmentation is a function of (seed, epoch, index), so a run killed
with SIGKILL and resumed ends as an uninterrupted one, with DataLoader workers, heavy
augmentation, random erasing, Mixup/CutMix and EMA on."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..resume_check import full_and_killed_runs_agree
from .conftest import make_image_folder
from .test_data import make_task


def _items(dataset, num_workers: int) -> np.ndarray:
    loader = DataLoader(dataset, batch_size=4, collate_fn=list, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(num_workers))  # worker seeds differ too
    return np.stack([item["pixel_values"] for batch in loader for item in batch])


def test_augmented_items_are_the_same_in_workers_and_differ_by_epoch(image_folder):
    train = make_task(image_folder, augment={"train": "heavy"}, random_erasing=0.5).build_datasets().train
    train.set_epoch(3)
    torch.manual_seed(0)
    main = _items(train, num_workers=0)
    torch.manual_seed(1)  # neither the global RNG nor the workers' play any part
    np.testing.assert_array_equal(_items(train, num_workers=2), main)
    train.set_epoch(4)
    other = _items(train, num_workers=2)
    assert all(not np.array_equal(a, b) for a, b in zip(other, main))


def test_vision_run_killed_and_resumed_matches_uninterrupted(tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=12)  # 36 images: 22 train, 7 + 7 held out
    recipe = {
        "name": "tiny-vision", "task": "image-classification", "seed": 3,
        "model": {"name": "test_resnet", "pretrained": False, "image_size": 32},
        "data": {"source": str(images), "val_size": 0.2, "test_size": 0.2,
                 "augment": {"train": "heavy", "eval": "none"}, "random_erasing": 0.5},
        "regularization": {"label_smoothing": 0.1, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.5,
                           "ema_decay": 0.9},
        "train": {"epochs": 4, "batch_size": 8, "eval_every": 2, "num_workers": 2, "threads": 1,
                  "precision": "fp32", "lr": 1e-3},
    }
    killed = full_and_killed_runs_agree(recipe, tmp_path, kill_at=4)  # 3 steps per epoch
    assert killed["epoch"] >= 1
