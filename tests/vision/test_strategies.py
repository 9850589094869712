"""Each core strategy, driven by the vision layer groups, trains exactly the parameters it should.

A tiny timm ResNet (groups: stem, layer1-4, head) trains two steps through the core Trainer; every
parameter and BatchNorm statistic is compared with its value before training.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from omnitune.core.api import build_task, build_trainer
from omnitune.core.base.recipe import validate_recipe

GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def train_two_steps(image_folder, tmp_path, finetune: dict):
    raw = {"name": "t", "task": "image-classification", "seed": 0,
           "model": {"name": "test_resnet", "pretrained": False, "image_size": 32},
           "data": {"source": str(image_folder)}, "finetune": finetune,
           # fp32 and a visible weight decay: every trained tensor moves, frozen ones stay bit-equal.
           "optim": {"weight_decay": 0.01},
           "train": {"epochs": 1, "max_steps": 2, "batch_size": 8, "precision": "fp32", "lr": 1e-2,
                     "save_checkpoints": False}}
    rec = validate_recipe(raw)
    task = build_task(rec)
    bundle = task.build_datasets()
    model = task.build_model()
    # timm zero-initialises each residual block's last BatchNorm scale, which zeroes the gradient
    # of the block's earlier norm layers until that scale has trained; unit scales give every
    # trainable tensor a gradient from the first step.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    groups = task.layer_groups(model)
    assert [g.name for g in groups] == GROUPS
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = {n: b.detach().clone() for n, b in model.named_buffers() if "running_" in n}
    trainer = build_trainer(rec, task, model, bundle, tmp_path / "run")
    trainer.fit()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    assert trained is model
    names = {id(p): n for n, p in model.named_parameters()}
    group_of = {names[id(p)]: g.name for g in groups for p in g.parameters()}
    changed_groups = {g: [] for g in GROUPS}
    for n, p in model.named_parameters():
        changed_groups[group_of[n]].append(not torch.equal(p, before[n]))
    moved_stats = {n: not torch.equal(b, stats[n]) for n, b in model.named_buffers() if "running_" in n}
    return changed_groups, moved_stats, model


def all_or_none(changed: dict[str, list[bool]]) -> dict[str, bool]:
    """Per group: True if every tensor moved, False if none did; a mix fails the test."""
    out = {}
    for group, flags in changed.items():
        assert all(flags) or not any(flags), f"group {group}: only some tensors moved"
        out[group] = all(flags)
    return out


@pytest.mark.parametrize("finetune, trained", [
    ({"strategy": "full"}, GROUPS),
    ({"strategy": "feature_extraction"}, ["head"]),
    ({"strategy": "partial", "freeze_layers": 2}, ["layer2", "layer3", "layer4", "head"]),
    # Gradual: step 1 trains the head, then layer4 is unfrozen and trains in step 2.
    ({"strategy": "gradual", "unfreeze_every": 1, "unfreeze_unit": "step"}, ["layer4", "head"]),
    ({"strategy": "full", "layer_decay": 0.5}, GROUPS),
])
def test_strategy_trains_exactly_its_groups(image_folder, tmp_path, finetune, trained):
    changed, _, _ = train_two_steps(image_folder, tmp_path, finetune)
    assert all_or_none(changed) == {g: g in trained for g in GROUPS}


def bn_stats_moved_by_group(model: nn.Module, moved: dict[str, bool]) -> dict[str, bool]:
    out: dict[str, list[bool]] = {}
    for n, flag in moved.items():
        top = n.split(".")[0]
        group = "stem" if top in ("conv1", "bn1") else top
        out.setdefault(group, []).append(flag)
    return {g: all(f) if all(f) or not any(f) else None for g, f in out.items()}


def test_frozen_batchnorm_keeps_its_running_statistics(image_folder, tmp_path):
    _, moved, model = train_two_steps(image_folder, tmp_path,
                                      {"strategy": "partial", "freeze_layers": 2, "freeze_norm_stats": True})
    by_group = bn_stats_moved_by_group(model, moved)
    assert by_group == {"stem": False, "layer1": False, "layer2": True, "layer3": True, "layer4": True}


def test_without_freeze_norm_stats_frozen_batchnorm_statistics_do_move(image_folder, tmp_path):
    # The control for the test above: frozen weights alone do not keep BatchNorm statistics fixed.
    _, moved, model = train_two_steps(image_folder, tmp_path, {"strategy": "partial", "freeze_layers": 2})
    assert bn_stats_moved_by_group(model, moved)["stem"] is True
