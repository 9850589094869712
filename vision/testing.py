"""Tiny vision fixtures: generated images and timm's tiny test models, nothing downloaded.

They back the image task's registered fixture (``omnitune.fixtures``: the contract tests and the
tiny run of every shipped recipe) and the test suite's fixtures; production code never imports them.
Classes differ by colour (or brightness) so that a tiny model learns something in a few steps, and
images have odd sizes so resizing is exercised.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

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


def tiny_image_recipe(folder: Path, like=None) -> dict:
    """image-classification: timm's tiny ``test_resnet`` (random init) on a generated 3-class image
    folder. ``like`` (a shipped recipe): the tiny model of the same family (``test_efficientnet``
    for EfficientNets, whose layer groups the recipe's freeze settings count) and an IDX folder for
    the Fashion-MNIST recipes."""
    folder = Path(folder)
    family = like.model.name.lower() if like is not None else ""
    effnet = "effnet" in family or "efficientnet" in family
    idx = like is not None and "fashion-mnist" in like.data.source
    data = folder / ("idx" if idx else "images")
    if not data.exists():
        (make_idx_folder if idx else make_image_folder)(data)
    return {
        "name": "tiny-image-classification", "task": "image-classification", "seed": 0,
        "model": {"name": "test_efficientnet" if effnet else "test_resnet", "pretrained": False, "image_size": 32},
        "data": {"source": str(data), "validation_source": None, "test_source": None, "labels": None},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3, "precision": "fp32"},
        "output": {"dir": str(folder / "runs")},
    }


def tiny_image_inputs(folder: Path) -> list[str]:
    """Two image files (a red and a green one, of odd sizes) for ``predict``."""
    from PIL import Image

    out = Path(folder) / "inputs"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, size in (("cat", (37, 45)), ("dog", (50, 33))):
        path = out / f"{name}.png"
        Image.fromarray(np.full((*size, 3), COLOURS[name], dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


class ImageClassificationFixture:
    """image-classification's fixture (entry point in ``omnitune.fixtures``)."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_image_recipe(folder, like)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return tiny_image_inputs(folder)
