"""Every shipped vision recipe validates, and runs end to end through the core API on tiny data.

The tiny runs swap in a tiny timm model of the same family and generated data of the same kind
(an IDX folder for the Fashion-MNIST recipes, an image folder for the ImageFolder recipe) and keep
every other setting of the recipe: strategy, frozen groups and BatchNorm, augmentation, mixing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnitune.core.api import predict, train
from omnitune.core.recipe import load_recipe, shipped_recipes_dir

from .conftest import make_idx_folder

RECIPES = sorted((shipped_recipes_dir() / "vision").glob("*.yaml"))


def test_there_are_the_promised_recipes():
    names = {p.stem for p in RECIPES}
    assert {"resnet50-imagefolder", "effnet-lite0-fmnist-linear", "effnet-lite0-fmnist-partial",
            "effnet-lite0-fmnist-full", "effnet-lite0-fmnist-scratch"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_offline(path):
    recipe = load_recipe(path)
    assert recipe.task == "image-classification" and recipe.name == path.stem and recipe.description


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_tiny_run_of_recipe(path, tmp_path, image_folder):
    recipe = load_recipe(path)
    fmnist = recipe.data.source == "asset:fashion-mnist"
    overrides = {
        "model.name": "test_efficientnet" if "effnet" in recipe.model.name else "test_resnet",
        "model.pretrained": False, "model.image_size": 32,
        "data.source": str(make_idx_folder(tmp_path / "idx") if fmnist else image_folder),
        "train.epochs": 1, "train.max_steps": 2, "train.batch_size": 8, "train.eval_batch_size": 16,
        "output.dir": str(tmp_path / "runs"), "output.run_name": "tiny",
    }
    result = train(path, overrides)
    run = Path(result.run_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and "top5_accuracy" in metrics["test"]
    for name in ("confusion_matrix_test.png", "report.md", "model/config.json", "model/model.safetensors"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert "confusion_matrix_test.png" in report and "| class | precision | recall | F1 | support |" in report
    if metrics["test"]["accuracy"] < 1.0:
        assert (run / "confidently_wrong_test.png").is_file()
    # The saved model predicts on image files through the public API.
    image = next((image_folder / "cat").glob("*.png"))
    out = predict(run, [str(image)])
    assert out[0]["label"] in json.loads((run / "model/config.json").read_text())["label_names"]


@pytest.mark.slow
def test_linear_probe_recipe_on_the_real_assets_learns(tmp_path):
    # The real Lite0 weights and Fashion-MNIST files end to end, 10 steps on 640 images: well above
    # chance (10%); 0.41 was measured. (That the weights are the real ImageNet ones is what the
    # photo test in test_assets.py checks.)
    result = train("vision/effnet-lite0-fmnist-linear", {
        "data.max_samples": 640, "data.max_eval_samples": 200, "train.epochs": 1,
        "output.dir": str(tmp_path), "output.run_name": "real"})
    assert result.metrics["test"]["accuracy"] > 0.3
