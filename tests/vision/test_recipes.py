"""Every shipped vision recipe validates. Their tiny runs (a tiny timm model of the same family and
generated data of the same kind swapped in) are in tests/core/test_shipped_recipes.py."""

from __future__ import annotations

import pytest

from omnitune.core.api import train
from omnitune.core.base.recipe import load_recipe, shipped_recipes_dir

RECIPES = sorted((shipped_recipes_dir() / "vision").glob("*.yaml"))


def test_there_are_the_promised_recipes():
    names = {p.stem for p in RECIPES}
    assert {"resnet50-imagefolder", "effnet-lite0-fmnist-linear", "effnet-lite0-fmnist-partial",
            "effnet-lite0-fmnist-full", "effnet-lite0-fmnist-scratch"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_offline(path):
    recipe = load_recipe(path)
    assert recipe.task == "image-classification" and recipe.name == path.stem and recipe.description


@pytest.mark.slow
def test_linear_probe_recipe_on_the_real_assets_learns(tmp_path):
    # The real Lite0 weights and Fashion-MNIST files end to end, 10 steps on 640 images: well above
    # chance (10%); 0.41 was measured. (That the weights are the real ImageNet ones is what the
    # photo test in test_assets.py checks.)
    result = train("vision/effnet-lite0-fmnist-linear", {
        "data.max_samples": 640, "data.max_eval_samples": 200, "train.epochs": 1,
        "output.dir": str(tmp_path), "output.run_name": "real"})
    assert result.metrics["test"]["accuracy"] > 0.3
