"""The EfficientNet-Lite0 asset: every tensor maps onto timm's tf_efficientnet_lite0 by position.

The fast tests build a stand-in checkpoint from a random timm model (same tensor order and shapes
as the real file, other names), so nothing is downloaded; the slow test loads the real weights and
classifies real photos shipped with scikit-learn.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch

from omnitune.core.base.errors import AssetError
from omnitune.vision.assets import EFFNET_LITE0, FASHION_MNIST, LITE0_PTH, _prepare_lite0, map_lite0_state_dict
from omnitune.vision.models import build_classifier, load_folder


def stand_in_checkpoint(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """A random Lite0 whose state dict is renamed like the original checkpoint (_blocks.N._bn1...)."""
    torch.manual_seed(seed)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so a mix-up would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    renamed = {f"_src{i:03d}.{name.rsplit('.', 1)[-1]}": t.clone() for i, (name, t) in enumerate(model.state_dict().items())}
    return renamed, model


def test_every_tensor_maps_by_position_with_its_shape():
    source, model = stand_in_checkpoint()
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = map_lite0_state_dict(source, target)
    assert list(mapped) == list(target)
    assert len(mapped) == len(source) == 296  # as in the real file
    for (name, t), expected in zip(mapped.items(), model.state_dict().values()):
        assert torch.equal(t, expected), name


def test_a_different_checkpoint_is_refused():
    source, _ = stand_in_checkpoint()
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    items = list(source.items())
    with pytest.raises(AssetError, match="295 tensors"):
        map_lite0_state_dict(dict(items[:-1]), target)
    items[0], items[6] = items[6], items[0]  # stem conv swapped with a depthwise conv: shapes differ
    with pytest.raises(AssetError, match="does not fit"):
        map_lite0_state_dict(dict(items), target)


def test_prepare_writes_a_loadable_model_with_imagenet_labels(tmp_path):
    source, model = stand_in_checkpoint(seed=1)
    torch.save(source, tmp_path / LITE0_PTH)
    _prepare_lite0(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_classes"] == 1000 and len(config["label_names"]) == 1000
    assert config["label_names"][1].startswith("goldfish")
    loaded, pre, _ = load_folder(tmp_path)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.input_size == 224
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    # And as a model name with a new 10-class head, the backbone kept:
    ten, _, _ = build_classifier(str(tmp_path), pretrained=True, num_classes=10)
    torch.testing.assert_close(ten.conv_stem.weight, model.conv_stem.weight)
    assert ten.get_classifier().out_features == 10


def test_assets_pin_hashes_and_record_origin_and_licence():
    for asset in (EFFNET_LITE0, FASHION_MNIST):
        assert asset.licence and asset.origin
        for pkg in asset.packages:
            assert len(pkg.sha256) == 64 and pkg.version


@pytest.mark.slow
def test_real_lite0_asset_recognises_real_photos():
    import numpy as np
    from sklearn.datasets import load_sample_image

    from omnitune.core.base.assets import fetch
    from omnitune.vision.augment import Augmenter

    folder = fetch("effnet-lite0")
    model, pre, config = load_folder(folder)
    model.eval()
    aug = Augmenter("none", train=False, size=pre.input_size, mean=pre.mean, std=pre.std,
                    crop_pct=pre.crop_pct, interpolation=pre.interpolation)
    names = config["label_names"]
    expected = {
        # A Chinese temple roof over a lake; ImageNet has no "temple", these are its neighbours.
        "china.jpg": {"palace", "bell cote, bell cot", "monastery", "castle", "church, church building",
                      "stupa, tope", "pagoda"},
        "flower.jpg": {"daisy"},
    }
    for photo, sensible in expected.items():
        x = torch.from_numpy(aug(np.asarray(load_sample_image(photo)), 0))[None]
        with torch.no_grad():
            top5 = model(x).softmax(-1)[0].topk(5).indices.tolist()
        labels = [names[i] for i in top5]
        assert labels[0] in sensible or sensible & set(labels[:3]), (photo, labels)
