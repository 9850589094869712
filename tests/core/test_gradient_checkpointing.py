"""``train.gradient_checkpointing`` for every task: recomputing activations changes memory, not maths.

Each task's tiny model trains two steps with and without checkpointing from the same seed; the
logged training losses and the final weights must agree, and the model must report checkpointing
as switched on (transformers' ``is_activation_checkpointing``, timm's ``grad_checkpointing``).
"""

from __future__ import annotations

import pytest
from torch import nn

from omnitune.core.api import build_task, seed_everything, train
from omnitune.core.base.errors import OmnituneError
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.loop.strategies import enable_gradient_checkpointing
from omnitune.core.loop.tracking import read_events

from ..fixtures import task_params, tiny_recipe


def _checkpointing_on(model: nn.Module) -> bool:
    return any(getattr(m, "is_activation_checkpointing", False) or getattr(m, "grad_checkpointing", False)
               for m in model.modules())


@pytest.mark.parametrize("task_name", task_params())
def test_checkpointing_is_on_and_changes_nothing(task_name, tmp_path):
    raw = tiny_recipe(task_name, tmp_path / "fixture")
    raw["train"] = {**raw.get("train", {}), "max_steps": 2, "epochs": 1, "log_every": 1, "threads": 1}
    raw["output"] = {"dir": str(tmp_path / "runs")}
    recipe = validate_recipe(raw)

    seed_everything(recipe.seed)
    model = build_task(recipe).build_model()
    assert enable_gradient_checkpointing(model) in {"transformers", "timm"}
    assert _checkpointing_on(model)

    runs = {}
    for flag in (False, True):
        result = train(recipe, {"train.gradient_checkpointing": flag, "output.run_name": f"gc-{flag}"})
        runs[flag] = result
    losses = {flag: [e["loss"] for e in _train_events(r.run_dir)] for flag, r in runs.items()}
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-5, abs=1e-6)
    assert runs[True].metrics["memory"]["gradient_checkpointing"] in {"transformers", "timm"}
    assert runs[False].metrics["memory"]["gradient_checkpointing"] is None
    assert runs[True].metrics["memory"]["peak_rss_mb"] > 100  # torch alone takes more than that


def _train_events(run_dir):
    return [e for e in read_events(run_dir) if e["event"] == "train"]


def test_a_model_without_checkpointing_is_a_clear_error():
    with pytest.raises(OmnituneError, match="gradient_checkpointing"):
        enable_gradient_checkpointing(nn.Linear(2, 2))
