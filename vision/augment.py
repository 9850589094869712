"""albumentations pipelines: named presets or recipe-declared lists, train and eval apart.

A pipeline spec is a preset name (``none``, ``light``, ``medium``, ``heavy``) or a list of steps,
each ``{name: <albumentations class>, <its arguments>...}``. Every pipeline ends by bringing the
image to the model's input size (a no-op when a step already did) and normalising with the model's
mean/std, so a declared list only says what varies.

Randomness: :meth:`Augmenter.__call__` takes an explicit integer seed and reseeds the pipeline
with it, so an image's augmentation is a pure function of (image, seed). The training dataset
derives that seed from (run seed, epoch, sample index) (``omnitune.core.base.seeding.item_seed``), never
from a worker's or a global RNG: runs are reproducible under ``seed`` with any number of workers,
and a resumed run augments exactly as an uninterrupted one.
"""

from __future__ import annotations

import inspect
from typing import Any

import cv2
import numpy as np

PRESETS = ("none", "light", "medium", "heavy")
AugmentSpec = str | list[dict[str, Any]]

_CV2_INTERP = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
               "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}


def cv2_interpolation(name: str) -> int:
    return _CV2_INTERP.get(name, cv2.INTER_LINEAR)


def _resize_center(size: int, crop_pct: float, interpolation: int) -> list:
    import albumentations as A

    # Eval geometry as in timm: shorter side to size / crop_pct, then a centred size x size crop.
    return [A.SmallestMaxSize(max_size=int(round(size / crop_pct)), interpolation=interpolation),
            A.CenterCrop(height=size, width=size)]


def preset_steps(preset: str, size: int, crop_pct: float, interpolation: int) -> list:
    """The train-time steps of a preset (geometry included)."""
    import albumentations as A

    if preset == "none":
        return _resize_center(size, crop_pct, interpolation)
    if preset == "light":
        # Mild crops keep most of the object: safe for small or low-resolution images.
        return [A.RandomResizedCrop(size=(size, size), scale=(0.6, 1.0), interpolation=interpolation),
                A.HorizontalFlip(p=0.5)]
    if preset == "medium":
        return [A.RandomResizedCrop(size=(size, size), scale=(0.3, 1.0), interpolation=interpolation),
                A.HorizontalFlip(p=0.5),
                A.Affine(rotate=(-15, 15), p=0.3),
                A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.5)]
    if preset == "heavy":
        # The ImageNet-training recipe's range (Inception crop scale 0.08-1) plus photometric noise.
        return [A.RandomResizedCrop(size=(size, size), scale=(0.08, 1.0), interpolation=interpolation),
                A.HorizontalFlip(p=0.5),
                A.Affine(rotate=(-20, 20), shear=(-8, 8), p=0.5),
                A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, p=0.8),
                A.ToGray(p=0.05),
                A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.3)]
    raise ValueError(f"unknown augmentation preset {preset!r} (known: {', '.join(PRESETS)})")


def steps_from_spec(steps: list[dict[str, Any]]) -> list:
    """[{name: HorizontalFlip, p: 0.5}, ...] -> albumentations transforms; errors name the step."""
    import albumentations as A

    out = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("name"), str):
            raise ValueError(f"step {i}: expected a mapping with a 'name' (an albumentations class)")
        args = {k: v for k, v in step.items() if k != "name"}
        cls = getattr(A, step["name"], None)
        if not isinstance(cls, type) or not issubclass(cls, A.BasicTransform):
            raise ValueError(f"step {i}: {step['name']!r} is not an albumentations transform")
        if cls.__name__ in ("Normalize", "ToTensorV2"):
            raise ValueError(f"step {i}: {cls.__name__} is added automatically (model mean/std); remove it")
        # albumentations only warns about unknown arguments: a typo would silently do nothing.
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(args) - set(params))
            if unknown:
                raise ValueError(f"step {i} ({step['name']}): unknown argument(s) {', '.join(unknown)}")
        try:
            out.append(cls(**args))
        except Exception as exc:  # albumentations validates its arguments with pydantic
            raise ValueError(f"step {i} ({step['name']}): {exc}".splitlines()[0]) from None
    return out


def validate_spec(spec: AugmentSpec) -> AugmentSpec:
    """Fail at recipe validation, not mid-run: presets must exist, steps must build."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown preset {spec!r} (known: {', '.join(PRESETS)})")
    else:
        steps_from_spec(spec)
    return spec


class Augmenter:
    """uint8 HxWx3 RGB image -> float32 3xSxS normalised array, seeded per call."""

    def __init__(self, spec: AugmentSpec, *, train: bool, size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], crop_pct: float = 0.875, interpolation: str = "bilinear",
                 random_erasing: float = 0.0) -> None:
        import albumentations as A

        interp = cv2_interpolation(interpolation)
        if isinstance(spec, str):
            # Presets are training pipelines; evaluation with a preset name is resize + centre crop.
            steps = preset_steps(spec, size, crop_pct, interp) if train else _resize_center(size, crop_pct, interp)
        else:
            steps = steps_from_spec(spec)
        # Whatever the steps did, the model gets size x size: a no-op when they already crop to it.
        steps += [A.SmallestMaxSize(max_size=size, interpolation=interp), A.CenterCrop(height=size, width=size)]
        if train and random_erasing > 0:
            # Erase after geometry (as timm's RandomErasing after the crop), filled with noise.
            steps.append(A.Erasing(p=random_erasing, scale=(0.02, 0.25), fill="random"))
        self.pipeline = A.Compose(steps, seed=0)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1) * 255.0
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1) * 255.0
        self.random = bool(train) or not isinstance(spec, str)
        self.size = size

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        if self.random:
            self.pipeline.set_random_seed(seed)
        out = self.pipeline(image=image)["image"]
        # Normalise here (not A.Normalize) to go uint8 -> CHW float in one pass.
        chw = np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)
        return (chw - self.mean) / self.std
