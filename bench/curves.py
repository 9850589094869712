"""The README's data-size curves: pretrained vs from-scratch as the training set grows.

Two curves, each through ``omnitune curve`` (core/studies/curve.py), limited so each finishes in minutes on
2 CPU cores:

- ``text``: MiniLM-L6 on Rotten Tomatoes (recipe text/minilm-rotten-tomatoes), sizes 100,300,1000,
  3 epochs at batch 16, validation and test capped at 300 rows, max_length 64.
- ``vision``: EfficientNet-Lite0 on Fashion-MNIST (recipe vision/effnet-lite0-fmnist-full) at 32 px,
  sizes 100,300,1000, 4 epochs at batch 32, validation and test capped at 300 images. The asset is IDX arrays,
  which have no image files for per-size manifests, so a stratified 3,000-image subset of its
  training set is first written as an ImageFolder under the output folder.

    .venv/bin/python bench/curves.py text   [--sizes 100,300,1000] [--repeats 1] [--compare scratch] [--out DIR]
    .venv/bin/python bench/curves.py vision [...]

Prints the curve table (curve.md) and the wall time; the figures in the README came from these
commands (with ``--threads 1`` on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import gzip
import struct
import time
from pathlib import Path

import numpy as np

TEXT = {"recipe": "text/minilm-rotten-tomatoes",
        "overrides": {"train.epochs": 3, "train.batch_size": 16, "model.max_length": 64, "data.max_eval_samples": 300,
                      "early_stopping.enabled": False, "train.save_checkpoints": False}}
VISION = {"recipe": "vision/effnet-lite0-fmnist-full",
          "overrides": {"model.image_size": 32, "train.epochs": 4, "train.batch_size": 32,
                        "data.max_eval_samples": 300, "train.save_checkpoints": False}}
FMNIST_CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle_boot"]


def _idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        _, _, dtype, ndim = struct.unpack(">BBBB", f.read(4))
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def fmnist_imagefolder(out: Path, n: int = 3000, seed: int = 0) -> Path:
    """A stratified ``n``-image subset of the Fashion-MNIST training arrays as <out>/<class>/<i>.png."""
    from PIL import Image

    from omnitune.core.base import assets
    from omnitune.core.base.data import stratified_subsample

    folder = Path(assets.fetch("fashion-mnist"))
    images = _idx(next(p for p in sorted(folder.rglob("train-images*")) if p.is_file()))
    labels = _idx(next(p for p in sorted(folder.rglob("train-labels*")) if p.is_file()))
    if (out / ".complete").is_file():
        return out
    for i in stratified_subsample(labels.tolist(), n, seed):
        target = out / FMNIST_CLASSES[labels[i]]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(target / f"{i}.png")
    (out / ".complete").write_text("ok\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=["text", "vision"])
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--compare", default="scratch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from omnitune.core.api import curve

    spec = TEXT if args.which == "text" else VISION
    out = Path(args.out or f"runs/bench-curve-{args.which}")
    overrides = dict(spec["overrides"])
    if args.threads:
        overrides["train.threads"] = args.threads
    if args.which == "vision":
        overrides["data.source"] = str(fmnist_imagefolder(out / "fmnist-3000"))
        overrides["data.max_samples"] = None
    t0 = time.perf_counter()
    result = curve(spec["recipe"], overrides, sizes=args.sizes, repeats=args.repeats, compare=args.compare,
                   out_dir=out / "curve")
    print((result["curve_dir"] / "curve.md").read_text())
    print(f"wall time {time.perf_counter() - t0:.0f} s; folder {result['curve_dir']}")


if __name__ == "__main__":
    main()
