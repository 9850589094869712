"""Model building, layer groups and save/load for several backbone families (no downloads)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from omnitune.vision.models import build_classifier, image_layer_groups, load_folder, save_folder

# One tiny model per family the groups code must handle: ResNet stages, EfficientNet blocks with a
# conv head, ConvNeXt with a norm in its head, ViT with root-level tokens; plus torchvision.
MODELS = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit", "tv:resnet18"]


@pytest.mark.parametrize("name", MODELS)
def test_groups_cover_every_parameter_once_and_head_is_the_new_classifier(name):
    model, pre, arch = build_classifier(name, pretrained=False, num_classes=7)
    groups = image_layer_groups(model)
    seen = [id(p) for g in groups for p in g.parameters()]
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert set(seen) == {id(p) for p in model.parameters()}, "a parameter is in no group"
    assert groups[0].name == "stem" and groups[-1].name == "head"
    assert len(groups) >= 4  # stem, at least two stages, head
    head = list(groups[-1].parameters())
    linear = [m for m in groups[-1].modules if isinstance(m, nn.Linear)]
    assert len(linear) == 1 and linear[0].out_features == 7
    assert {id(p) for p in head} == {id(linear[0].weight), id(linear[0].bias)}
    # Stages run input to output: the first stage's parameters come before the last's in the model.
    order = {id(p): i for i, p in enumerate(model.parameters())}
    firsts = [min(order[id(p)] for p in g.parameters()) for g in groups]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_batchnorm_layers_are_reachable_from_their_group(name):
    model, _, _ = build_classifier(name, pretrained=False, num_classes=3)
    groups = image_layer_groups(model)
    reachable = {id(m) for g in groups[:-1] for mod in g.modules for m in mod.modules()
                 if isinstance(m, nn.BatchNorm2d)}
    all_bn = {id(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert reachable == all_bn


def test_save_and_load_round_trip_gives_the_same_outputs(tmp_path):
    model, pre, arch = build_classifier("test_efficientnet", pretrained=False, num_classes=4)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    save_folder(model, tmp_path / "m", architecture=arch, label_names=list("abcd"), data_config=pre)
    loaded, pre2, config = load_folder(tmp_path / "m")
    assert config["label_names"] == list("abcd") and pre2 == pre
    torch.testing.assert_close(loaded.eval()(x), expected)


def test_saved_folder_loads_as_a_model_name_with_a_new_head(tmp_path):
    model, pre, arch = build_classifier("test_resnet", pretrained=False, num_classes=4)
    save_folder(model, tmp_path / "m", architecture=arch, label_names=list("abcd"), data_config=pre)
    again, _, _ = build_classifier(str(tmp_path / "m"), pretrained=True, num_classes=6)
    assert again.get_classifier().out_features == 6
    torch.testing.assert_close(again.conv1[0].weight, model.conv1[0].weight)  # backbone kept
    scratch, _, _ = build_classifier(str(tmp_path / "m"), pretrained=False, num_classes=6)
    assert not torch.equal(scratch.conv1[0].weight, model.conv1[0].weight)  # architecture only
