"""PEFT on an image classifier: the run saves the adapter only, and evaluate/predict rebuild the
base and attach it (LoRA on every convolution through peft; bottleneck adapters after each stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnitune.core.api import evaluate, predict, train
from omnitune.core.base.recipe import shipped_recipes_dir


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_adapter_run_saves_adapter_only_and_reloads(method, tmp_path, image_folder):
    overrides = {
        "model.name": "test_resnet", "model.pretrained": False, "model.image_size": 32,
        "data.source": str(image_folder), "train.epochs": 1, "train.max_steps": 3, "train.batch_size": 8,
        "train.lr": 1e-2, "finetune.freeze_layers": 0, "finetune.freeze": [], "finetune.strategy": "full",
        "finetune.peft": {"method": method, "r": 4}, "output.dir": str(tmp_path), "output.run_name": method,
    }
    result = train(shipped_recipes_dir() / "vision" / "resnet50-imagefolder.yaml", overrides)
    model_dir = Path(result.run_dir) / "model"
    assert (model_dir / "adapter_model.safetensors").is_file() and not (model_dir / "model.safetensors").exists()
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["fc"]  # the new classifier trains and is saved beside the adapter
    if method == "bottleneck":  # one adapter after each ResNet stage
        assert config["target_modules"] == ["layer1", "layer2", "layer3", "layer4"]
    # Rebuilt base + adapter scores the test split as the trained model did, and predicts on files.
    again = evaluate(result.run_dir)["metrics"]
    assert again["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"], abs=1e-6)
    assert again["loss"] == pytest.approx(result.metrics["test"]["loss"], abs=1e-4)
    out = predict(result.run_dir, [str(next((image_folder / "dog").glob("*.png")))])
    assert out[0]["label"] in {"cat", "dog", "fox"}
