"""Losses normalised by the items of the whole step, for every registered task: accumulating 2
micro-batches of 4 trains exactly like one batch of 8 with length-grouped batches (whose token
counts differ from micro-batch to micro-batch), and the evaluation loss does not depend on the
evaluation batch size."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from omnitune.core.api import as_recipe, build_task, seed_everything, train
from omnitune.core.loop.trainer import evaluate_model

from ..fixtures import task_params, tiny_recipe


def _tiny(task_name: str, folder, **overrides):
    raw = tiny_recipe(task_name, folder / "fixture")
    base = {"seed": 3, "train.epochs": 1, "train.max_steps": 3, "train.group_by_length": True,
            "train.precision": "fp32", "train.eval_every": 3, "regularization.dropout": 0.0,
            "output.dir": str(folder / "runs")}
    if task_name == "causal-lm":  # responses of different lengths, so token counts differ per sample
        base["data.response_template"] = " {answer} because {review}"
    return as_recipe(_validated(raw), {**base, **overrides})


def _validated(raw):
    from omnitune.core.base.recipe import validate_recipe

    return validate_recipe(raw)


def _has_batch_norm(task_name: str, folder) -> bool:
    recipe = _tiny(task_name, folder)
    task = build_task(recipe)
    task.build_datasets()
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in task.build_model().modules())


@pytest.mark.parametrize("task_name", task_params())
def test_accumulating_2x4_trains_like_a_batch_of_8(task_name, tmp_path):
    if _has_batch_norm(task_name, tmp_path):
        pytest.skip("batch norm statistics depend on the micro-batch itself, so 2 x 4 cannot equal 8")
    b8 = train(_tiny(task_name, tmp_path, **{"train.batch_size": 8, "train.grad_accum": 1,
                                             "output.run_name": "b8"}))
    b4x2 = train(_tiny(task_name, tmp_path, **{"train.batch_size": 4, "train.grad_accum": 2,
                                               "output.run_name": "b4x2"}))
    w8 = load_file(str(b8.run_dir / "checkpoints" / "last" / "model.safetensors"))
    w4x2 = load_file(str(b4x2.run_dir / "checkpoints" / "last" / "model.safetensors"))
    assert w8.keys() == w4x2.keys()
    for key in w8:
        torch.testing.assert_close(w4x2[key], w8[key], atol=2e-5, rtol=1e-4, msg=key)
    assert b4x2.metrics["validation"]["loss"] == pytest.approx(b8.metrics["validation"]["loss"], abs=1e-5)


@pytest.mark.parametrize("task_name", task_params())
def test_evaluation_loss_does_not_depend_on_the_batch_size(task_name, tmp_path):
    recipe = _tiny(task_name, tmp_path)
    task = build_task(recipe)
    bundle = task.build_datasets()
    seed_everything(0)
    model = task.build_model()
    losses = [evaluate_model(task, model, bundle.validation, bs, torch.device("cpu"))[0]["loss"]
              for bs in (1, 3, len(bundle.validation))]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert losses[2] == pytest.approx(losses[0], rel=1e-5)
