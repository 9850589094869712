"""Exact resume for speech: augmentation is a function of (seed, epoch, index) (no per-item draw
counter), so a run killed with SIGKILL and resumed ends as an uninterrupted one, with DataLoader
workers and noise, speed and SpecAugment on."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..resume_check import full_and_killed_runs_agree
from .conftest import make_audio_folder
from .test_asr_task import make_task

AUGMENT = [{"name": "noise", "prob": 0.7, "min_snr_db": 5, "max_snr_db": 20},
           {"name": "speed", "prob": 0.5, "factors": [0.9, 1.1]},
           {"name": "specaugment", "prob": 0.7, "time_masks": 2, "time_width": 10, "freq_masks": 1, "freq_width": 8}]


def _items(dataset, num_workers: int) -> np.ndarray:
    loader = DataLoader(dataset, batch_size=2, collate_fn=list, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(num_workers))
    return np.stack([item["input_features"] for batch in loader for item in batch])


def test_augmented_items_are_the_same_in_workers_and_on_every_draw(tiny_whisper, audio_folder):
    train = make_task(tiny_whisper, audio_folder, augment=AUGMENT).build_datasets().train
    train.set_epoch(2)
    main = _items(train, num_workers=0)
    np.testing.assert_array_equal(_items(train, num_workers=2), main)
    np.testing.assert_array_equal(_items(train, num_workers=0), main)  # a second draw: nothing counted
    train.set_epoch(3)
    other = _items(train, num_workers=0)
    assert sum(not np.array_equal(a, b) for a, b in zip(other, main)) >= len(main) // 2


def test_speech_run_killed_and_resumed_matches_uninterrupted(tmp_path, tiny_whisper):
    audio = make_audio_folder(tmp_path / "audio")  # 12 usable clips: 8 train, 2 + 2 held out
    recipe = {
        "name": "tiny-speech", "task": "speech-recognition", "seed": 5,
        "model": {"name": str(tiny_whisper), "max_new_tokens": 4},
        "data": {"source": str(audio), "val_size": 0.2, "test_size": 0.2, "max_bad_share": 0.5,
                 "augment": AUGMENT},
        "regularization": {"dropout": 0.1},
        "train": {"epochs": 3, "batch_size": 2, "eval_batch_size": 4, "eval_every": 2, "num_workers": 2,
                  "threads": 1, "precision": "fp32", "lr": 1e-3},
        "eval": {"baseline": False},
    }
    killed = full_and_killed_runs_agree(recipe, tmp_path, kill_at=6)  # 4 steps per epoch
    assert killed["epoch"] >= 1
