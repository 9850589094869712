"""A tiny run of every shipped recipe, whatever its task.

Recipes whose model and data are small bundled assets (MiniLM on Rotten Tomatoes) run as shipped
on a small subset of them. Every other recipe (Hub models and data, the bigger assets) runs with
its task's tiny model and data swapped in (its fixture's ``tiny_recipe(folder, like=recipe)``): only
the recipe's ``model`` and ``data`` fields that the tiny fixture sets are replaced, and every other
setting it ships (strategy, freezing, PEFT, schedule, augmentation, baseline) runs as shipped.
"""

from __future__ import annotations

import fnmatch
import json
import math

import pytest
import torch

from omnitune.core.base import assets
from omnitune.core.api import build_task, evaluate, predict, seed_everything, train
from omnitune.core.base.recipe import list_shipped_recipes, load_recipe
from omnitune.core.base.registry import list_tasks

from ..fixtures import tiny_inputs, tiny_recipe

SHIPPED = [name for name, _ in list_shipped_recipes()]
# Fetched once into the omnitune cache (tens of MB); the others are hundreds of MB or on the Hub.
SMALL_ASSETS = {"minilm-l6", "rotten-tomatoes"}
TINY = {"train.max_steps": 2, "train.epochs": 1, "train.batch_size": 4, "train.eval_batch_size": 8,
        "data.max_samples": 48, "data.max_eval_samples": 16, "train.threads": 1}


def _asset(ref: str) -> str | None:
    return ref[len(assets.ASSET_PREFIX):].split("/")[0] if ref.startswith(assets.ASSET_PREFIX) else None


def _as_shipped(recipe) -> bool:
    refs = [recipe.model.name, recipe.data.source, recipe.data.validation_source, recipe.data.test_source]
    return all(_asset(r) in SMALL_ASSETS for r in refs if r)


def _overrides(recipe, folder) -> dict:
    if _as_shipped(recipe):
        return {}
    tiny = tiny_recipe(recipe.task, folder, like=recipe)
    swapped = {f"{section}.{key}": value for section in ("model", "data") for key, value in tiny[section].items()}
    # Group columns and a retention set name the real data's columns and sources: not the tiny data's.
    return {**swapped, "eval.groups": [], "eval.retention": None}


def test_every_task_has_a_shipped_recipe():
    tasks = {load_recipe(n).task for n in SHIPPED}
    assert tasks == set(list_tasks())


@pytest.mark.parametrize("name", SHIPPED)
def test_tiny_run_of_shipped_recipe(name, tmp_path):
    recipe = load_recipe(name)
    overrides = {**_overrides(recipe, tmp_path / "fixtures"), **TINY,
                 "output.dir": str(tmp_path / "runs"), "output.run_name": "run"}
    if recipe.finetune.peft is not None and recipe.finetune.peft.quantize != "none" and not torch.cuda.is_available():
        overrides["finetune.peft.quantize"] = "none"  # QLoRA needs a GPU; the rest of the recipe runs
    result = train(name, overrides)
    run, m = result.run_dir, result.metrics
    assert m["steps"] == 2
    main = m["selected_by"]
    assert math.isfinite(m["test"][main]) and math.isfinite(m["validation"][main])
    assert json.loads((run / "metrics.json").read_text())["test"][main] == m["test"][main]
    assert (run / "report.md").is_file() and (run / "recipe.yaml").is_file()
    model_dir = run / "model"
    peft = load_recipe(run / "recipe.yaml").finetune.peft
    if peft is not None:
        assert (model_dir / "adapter_config.json").is_file()
        assert not (model_dir / "model.safetensors").exists()
        # Base + adapter rebuilt from the run folder score the test split as the trained model did.
        again = evaluate(run)["metrics"][main]
        assert again == pytest.approx(m["test"][main], rel=1e-4, abs=1e-4)
    else:
        _check_frozen_weights(run)
    # The saved model answers raw inputs through the public API.
    inputs = ["a fine, moving film"] if _as_shipped(recipe) else tiny_inputs(recipe.task, tmp_path / "fixtures")
    out = predict(run, inputs)
    assert len(out) == len(inputs) and not any("error" in o for o in out), out


def _check_frozen_weights(run):
    """What the recipe freezes (finetune.freeze globs) is unchanged in the saved model, and
    something else changed. Only for pretrained bases, which build_model rebuilds exactly."""
    rec = load_recipe(run / "recipe.yaml")
    if not rec.model.pretrained:
        return
    task = build_task(rec)
    saved = dict(task.load_pretrained(run / "model").named_parameters())
    seed_everything(rec.seed)
    base = dict(build_task(rec).build_model().named_parameters())
    frozen = [n for n in saved if any(fnmatch.fnmatchcase(n, g) for g in rec.finetune.freeze)]
    assert all(torch.equal(saved[n], base[n]) for n in frozen), "a frozen parameter changed"
    assert any(not torch.equal(saved[n], base[n]) for n in saved if n in base and n not in frozen)
