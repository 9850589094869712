"""Every shipped speech recipe validates; bottleneck adapters on Whisper. The tiny run of every shipped
recipe is in tests/core/test_shipped_recipes.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnitune.core.base.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes" / "speech").glob("*.yaml"))


def test_there_are_speech_recipes():
    names = {p.stem for p in RECIPES}
    assert {"whisper-tiny-asterisk-full", "whisper-tiny-asterisk-frozen-encoder", "whisper-tiny-asterisk-lora",
            "whisper-tiny-asterisk-short-window"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path):
    rec = load_recipe(path)
    assert rec.task in {"speech-recognition", "text-to-speech"} and rec.eval.baseline and rec.description


def _check_adapter_run(result, tiny_whisper):
    """A PEFT recipe saves the adapter alone (no copy of the token embedding, which is the head), and
    the reloaded base + adapter scores the test split as the trained model did."""
    from omnitune.core.api import evaluate

    model_dir = result.run_dir / "model"
    assert not (model_dir / "model.safetensors").exists()
    adapter = model_dir / "adapter_model.safetensors"
    assert adapter.stat().st_size < (tiny_whisper / "model.safetensors").stat().st_size / 4
    again = evaluate(result.run_dir)["metrics"]
    assert again["wer"] == pytest.approx(result.metrics["test"]["wer"], abs=1e-6)


def test_bottleneck_adapters_on_whisper(tiny_whisper, audio_folder, tmp_path):
    """Bottleneck adapters go after every attention output and feed-forward output of encoder and
    decoder; the run saves them alone and reloads to the same test WER."""
    import json

    from omnitune.core.api import train

    path = Path(__file__).resolve().parents[2] / "recipes" / "speech" / "whisper-tiny-asterisk-lora.yaml"
    result = train(path, {"model.name": str(tiny_whisper), "data.source": str(audio_folder),
                          "model.max_new_tokens": 4, "train.max_steps": 2, "train.batch_size": 2,
                          "train.eval_batch_size": 4, "train.threads": 1, "data.max_bad_share": 0.5,
                          "data.val_size": 0.2, "data.test_size": 0.2, "output.dir": str(tmp_path),
                          "eval.baseline": False, "finetune.peft": {"method": "bottleneck", "r": 8}})
    config = json.loads((result.run_dir / "model" / "adapter_config.json").read_text())
    assert config["peft_type"] == "BOTTLENECK" and config["target_modules"] == ["out_proj", "fc2"]
    assert config["modules_to_save"] == []  # the head is the tied token embedding: not trained, not saved
    _check_adapter_run(result, tiny_whisper)
