"""Freezing, gradual unfreezing, layer-wise LR and weight-decay groups on a tiny BERT."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from omnitune.core.api import train
from omnitune.core.base.errors import OmnituneError
from omnitune.core.base.recipe import RegularizationConfig
from omnitune.core.loop.strategies import (GradualUnfreezer, check_groups_cover, frozen_norm_modules,
                                      frozen_parameter_ids, param_groups, set_dropout)
from omnitune.core.base.task import LayerGroup
from omnitune.text.classification import TextClassificationTask, TextDataConfig, TextModelConfig

from ..conftest import text_recipe, write_recipe


@pytest.fixture()
def task_and_model(tiny_bert, reviews_csv):
    task = TextClassificationTask(model=TextModelConfig(name=str(tiny_bert)),
                                  data=TextDataConfig(source=str(reviews_csv), labels=["neg", "pos"]),
                                  regularization=RegularizationConfig(), seed=0)
    model = task.build_model()
    return task, model


def test_layer_groups_cover_and_order(task_and_model):
    task, model = task_and_model
    groups = task.layer_groups(model)
    assert [g.name for g in groups] == ["embeddings", "block_0", "block_1", "head"]
    check_groups_cover(model, groups)
    head_names = {n for n, p in model.named_parameters() if any(p is q for q in groups[-1].parameters())}
    assert "classifier.weight" in head_names


def test_layer_decay_and_head_lr_give_expected_lrs(task_and_model):
    task, model = task_and_model
    groups = task.layer_groups(model)
    pg = param_groups(model, groups, weight_decay=0.01, lr=1e-3, layer_decay=0.5, head_lr=5e-3)
    scales = {g["name"]: g["lr_scale"] for g in pg}
    assert scales["embeddings"] == pytest.approx(0.125)  # 0.5 ** 3
    assert scales["block_0"] == pytest.approx(0.25)
    assert scales["block_1"] == pytest.approx(0.5)
    assert scales["head"] == pytest.approx(5.0)  # head_lr / lr
    # No weight decay on biases and LayerNorm parameters; decay on matrices.
    names = {id(p): n for n, p in model.named_parameters()}
    for g in pg:
        for p in g["params"]:
            if names[id(p)].endswith(".bias") or "LayerNorm" in names[id(p)]:
                assert g["weight_decay"] == 0.0, names[id(p)]
            elif p.ndim == 2:
                assert g["weight_decay"] == 0.01, names[id(p)]


def test_trainer_sets_scaled_lrs(tmp_path, tiny_bert, reviews_csv):
    seen = {}

    def grab(trainer):
        if trainer.state.step == 1:
            seen.update({g["name"]: g["lr"] for g in trainer.optimizer.param_groups})

    recipe = text_recipe(tiny_bert, reviews_csv, tmp_path, finetune={"layer_decay": 0.5},
                         sched={"name": "constant", "warmup_steps": 0}, train={"lr": 1e-3, "epochs": 1})
    train(write_recipe(tmp_path / "r.yaml", recipe), callbacks=[grab])
    assert seen["head"] == pytest.approx(1e-3) and seen["block_1"] == pytest.approx(5e-4)
    assert seen["embeddings"] == pytest.approx(1.25e-4)


def _train_and_diff(tmp_path, tiny_bert, reviews_csv, name, finetune):
    from transformers import AutoModelForSequenceClassification

    recipe = text_recipe(tiny_bert, reviews_csv, tmp_path, finetune=finetune, train={"epochs": 1})
    recipe["output"]["run_name"] = name
    result = train(write_recipe(tmp_path / f"{name}.yaml", recipe))
    after = load_file(str(result.run_dir / "checkpoints" / "last" / "model.safetensors"))
    # The starting weights: the same seed builds the same head.
    torch.manual_seed(0)
    before = dict(AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=2).state_dict())
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    return changed, set(after)


def test_partial_freezing_keeps_frozen_parameters_bit_identical(tmp_path, tiny_bert, reviews_csv):
    changed, names = _train_and_diff(tmp_path, tiny_bert, reviews_csv, "partial",
                                     {"strategy": "partial", "freeze_layers": 2, "freeze": ["*.LayerNorm.*"]})
    frozen = {n for n in names if n.startswith("bert.embeddings.") or n.startswith("bert.encoder.layer.0.")
              or ".LayerNorm." in n}
    assert frozen and not (changed & frozen)
    assert "bert.encoder.layer.1.attention.self.query.weight" in changed
    assert "classifier.weight" in changed


def test_feature_extraction_trains_only_the_head(tmp_path, tiny_bert, reviews_csv):
    changed, names = _train_and_diff(tmp_path, tiny_bert, reviews_csv, "probe", {"strategy": "feature_extraction"})
    assert changed and all(n.startswith(("classifier.", "bert.pooler.")) for n in changed), changed


def test_gradual_unfreezing_follows_schedule(task_and_model):
    task, model = task_and_model
    groups = task.layer_groups(model)
    unfreezer = GradualUnfreezer(model, groups, every=2, unit="epoch")
    from omnitune.core.loop.strategies import apply_trainable

    apply_trainable(model, unfreezer.frozen_ids())

    def trainable_groups():
        return [g.name for g in groups if all(p.requires_grad for p in g.parameters())]

    assert trainable_groups() == ["head"]
    assert not unfreezer.maybe_unfreeze(1, "epoch")
    assert unfreezer.maybe_unfreeze(2, "epoch") and trainable_groups() == ["block_1", "head"]
    assert not unfreezer.maybe_unfreeze(2, "step")  # other unit: ignored
    unfreezer.maybe_unfreeze(4, "epoch")
    state = unfreezer.state_dict()
    fresh = GradualUnfreezer(model, groups, every=2, unit="epoch")
    fresh.load_state_dict(state)  # what a resumed run does
    assert trainable_groups() == ["block_0", "block_1", "head"]
    unfreezer.maybe_unfreeze(100, "epoch")
    assert trainable_groups() == [g.name for g in groups]


def test_gradual_run_records_unfreezing(tmp_path, tiny_bert, reviews_csv):
    recipe = text_recipe(tiny_bert, reviews_csv, tmp_path, train={"epochs": 3},
                         finetune={"strategy": "gradual", "unfreeze_every": 1})
    result = train(write_recipe(tmp_path / "g.yaml", recipe))
    events = [json.loads(l) for l in (result.run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["groups"] for e in events if e["event"] == "unfreeze"] == [2, 3, 4]


def test_bad_freeze_pattern_and_too_many_layers(task_and_model):
    task, model = task_and_model
    groups = task.layer_groups(model)
    with pytest.raises(OmnituneError, match="match no parameter"):
        frozen_parameter_ids(model, groups, "partial", ["encoder.nope.*"])
    with pytest.raises(OmnituneError, match="freeze every layer group"):
        frozen_parameter_ids(model, groups, "partial", freeze_layers=4)


def test_frozen_batchnorm_statistics_stay_fixed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    groups = [LayerGroup("stem", [model[0], model[1]]), LayerGroup("head", [model[3]])]
    frozen = frozen_parameter_ids(model, groups, "feature_extraction")
    norms = frozen_norm_modules(groups, frozen)
    assert norms == [model[1]]
    before = model[1].running_mean.clone()
    model.train()
    for m in norms:
        m.eval()
    model(torch.randn(8, 3, 6, 6) + 3.0)
    assert torch.equal(model[1].running_mean, before)


def test_dropout_override(task_and_model):
    _, model = task_and_model
    n = set_dropout(model, 0.3)
    assert n > 0 and all(m.p == 0.3 for m in model.modules() if isinstance(m, nn.Dropout))
