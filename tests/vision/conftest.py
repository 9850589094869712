"""Tiny generated image data for the vision tests: nothing is downloaded.

Classes differ by colour so that a tiny model can learn something in a few steps, and images have
odd sizes so resizing and cropping are exercised.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

COLOURS = {"cat": (200, 60, 60), "dog": (60, 200, 60), "fox": (60, 60, 200)}


def make_image_folder(root: Path, per_class: int = 10, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.normal(0, 25, (*size, 3)) + colour).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST-style IDX file (unsigned bytes), gzip-compressed."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_idx_folder(root: Path, n_train: int = 60, n_test: int = 30, seed: int = 0) -> Path:
    """The Fashion-MNIST file layout with 3 classes of 28x28 grey images (brightness = class)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 3
        images = (rng.normal(0, 20, (n, 28, 28)) + 60 + 70 * labels[:, None, None]).clip(0, 255)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    (root / "labels.txt").write_text("dark\nmid\nbright\n")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def idx_folder(tmp_path: Path) -> Path:
    return make_idx_folder(tmp_path / "idx")
