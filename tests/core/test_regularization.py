"""EMA of the weights, the L1 penalty and label smoothing."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from omnitune.core.api import train
from omnitune.core.loop.ema import EMA
from omnitune.core.loop.trainer import mean_loss

from ..conftest import text_recipe, write_recipe


def test_ema_update_and_swap():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # 0.9 * 0 + 0.1 * 1
    ema.update(model)  # 0.9 * 0.1 + 0.1 * 1 = 0.19
    assert ema.shadow["weight"] == pytest.approx(torch.full((1, 2), 0.19))
    with ema.swapped_in(model):
        assert torch.allclose(model.weight, torch.full((1, 2), 0.19))
    assert torch.equal(model.weight, torch.ones(1, 2))  # raw weights back


def _run(tmp_path, tiny_bert, reviews_csv, name, **sections):
    recipe = text_recipe(tiny_bert, reviews_csv, tmp_path, **sections)
    recipe["output"]["run_name"] = name
    return train(write_recipe(tmp_path / f"{name}.yaml", recipe))


def test_l1_penalty_shrinks_weights(tmp_path, tiny_bert, reviews_csv):
    plain = _run(tmp_path, tiny_bert, reviews_csv, "plain", train={"epochs": 2}, optim={"weight_decay": 0.0})
    l1 = _run(tmp_path, tiny_bert, reviews_csv, "l1", train={"epochs": 2}, optim={"weight_decay": 0.0},
              regularization={"l1": 1e-3, "dropout": 0.0})

    def l1_norm(run):
        w = load_file(str(run.run_dir / "checkpoints" / "last" / "model.safetensors"))
        return sum(float(t.abs().sum()) for k, t in w.items() if t.ndim > 1)

    assert l1_norm(l1) < 0.97 * l1_norm(plain)


def test_ema_run_saves_averaged_best_weights(tmp_path, tiny_bert, reviews_csv):
    result = _run(tmp_path, tiny_bert, reviews_csv, "ema", train={"epochs": 2},
                  regularization={"ema_decay": 0.5, "dropout": 0.0})
    best = load_file(str(result.run_dir / "checkpoints" / "best" / "model.safetensors"))
    last = load_file(str(result.run_dir / "checkpoints" / "last" / "model.safetensors"))
    # `last` holds the raw weights, `best` the averaged ones: they differ where training moved.
    assert any(not torch.equal(best[k], last[k]) for k in best)
    from omnitune.core.loop.checkpoint import read_state

    state = read_state(result.run_dir / "checkpoints" / "last")
    assert state["ema"]["decay"] == 0.5


def test_label_smoothing_raises_the_training_loss_floor():
    from omnitune.core.base.recipe import RegularizationConfig
    from omnitune.text.classification import TextClassificationTask, TextDataConfig, TextModelConfig

    def loss(smoothing):
        task = TextClassificationTask(model=TextModelConfig(name="unused"), data=TextDataConfig(source="unused"),
                                      regularization=RegularizationConfig(label_smoothing=smoothing), seed=0)

        class Out:
            logits = torch.tensor([[10.0, -10.0]])

        model = lambda **_: Out  # noqa: E731 - stands in for a model that is already certain
        batch = {"input_ids": torch.zeros(1, 1, dtype=torch.long), "labels": torch.tensor([0])}
        return float(mean_loss(task.forward(model, batch, train=True))), float(mean_loss(task.forward(model, batch, train=False)))

    assert loss(0.0)[0] == pytest.approx(0.0, abs=1e-6)
    smoothed_train, smoothed_eval = loss(0.2)
    # Smoothing 0.2 over 2 classes targets (0.9, 0.1): loss = -0.9 log p0 - 0.1 log p1 = 0.1 * 20 (approx.)
    assert smoothed_train == pytest.approx(2.0, rel=1e-3)
    assert smoothed_eval == pytest.approx(0.0, abs=1e-6)  # evaluation loss is never smoothed
