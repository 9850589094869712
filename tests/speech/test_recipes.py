"""Every shipped speech recipe validates, and runs end to end on a tiny model and tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omnitune.core.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes" / "speech").glob("*.yaml"))


def test_there_are_speech_recipes():
    names = {p.stem for p in RECIPES}
    assert {"whisper-tiny-asterisk-full", "whisper-tiny-asterisk-frozen-encoder", "whisper-tiny-asterisk-lora",
            "whisper-tiny-asterisk-short-window"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path):
    rec = load_recipe(path)
    assert rec.task == "speech-recognition" and rec.eval.baseline and rec.description


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_tiny_run(path, tiny_whisper, audio_folder, tmp_path):
    from safetensors.torch import load_file

    from omnitune.core.api import train

    result = train(path, {"model.name": str(tiny_whisper), "data.source": str(audio_folder),
                          "model.max_new_tokens": 4, "train.max_steps": 2, "train.batch_size": 2,
                          "train.eval_batch_size": 4, "train.threads": 1, "data.max_bad_share": 0.5,
                          "data.val_size": 0.2, "data.test_size": 0.2, "output.dir": str(tmp_path)})
    m = result.metrics
    for split in ("baseline_test", "test", "validation"):
        assert 0 <= m[split]["wer"] and 0 <= m[split]["cer"]
    assert (result.run_dir / "worst_utterances_test.md").is_file()
    rec = load_recipe(path)
    if rec.finetune.peft is not None:
        _check_adapter_run(result, tiny_whisper)
        return
    assert (result.run_dir / "model" / "model.safetensors").is_file()
    before, after = load_file(tiny_whisper / "model.safetensors"), load_file(result.run_dir / "model" / "model.safetensors")
    enc = "model.encoder.layers.0.fc1.weight"
    dec = "model.decoder.layers.0.fc1.weight"
    assert not torch.equal(before[dec], after[dec])  # the decoder trained in every recipe
    assert torch.equal(before[enc], after[enc]) == ("model.encoder.*" in rec.finetune.freeze)
    if rec.model.max_source_seconds:
        assert after["model.encoder.embed_positions.weight"].shape[0] == rec.model.max_source_seconds * 50


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
