"""A finished run reloads from its folder alone: the saved recipe, labels and tokenizer/config.

``evaluate``, ``predict`` and adapter loading never read the training data: they work after it is
deleted, and a changed data file cannot change the label set of a saved model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from omnitune.core.api import _load_run, evaluate, predict, train
from omnitune.core.base.errors import OmnituneError
from omnitune.text.testing import make_reviews

from ..fixtures import tiny_inputs, tiny_recipe

TINY_TRAIN = {"train.max_steps": 4, "train.epochs": 1, "train.log_every": 2, "data.max_samples": 64,
              "data.max_eval_samples": 32}
LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}


def _text_run(tmp_path: Path, **overrides):
    raw = tiny_recipe("text-classification", tmp_path / "fixtures")
    data = tmp_path / "train.csv"  # the run's own copy, deleted below
    shutil.copy(raw["data"]["source"], data)
    raw["data"].update(source=str(data), labels=None)  # labels learnt from the data, then saved
    raw["output"] = {"dir": str(tmp_path / "runs"), "run_name": "run"}
    return train(_as_file(tmp_path, raw), {**TINY_TRAIN, **overrides}), data


def _as_file(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("peft", [None, LORA], ids=["full", "lora"])
def test_predict_and_evaluate_after_the_training_data_is_gone(tmp_path, peft):
    result, data = _text_run(tmp_path, **({"finetune.peft": peft} if peft else {}))
    model_dir = result.run_dir / "model"
    assert (model_dir / "adapter_config.json").is_file() == (peft is not None)
    before = predict(result.run_dir, ["the film was good", "a dull story"])
    data.unlink()
    # Everything below reads the run folder only.
    after = predict(result.run_dir, ["the film was good", "a dull story"])
    assert [p["label"] for p in after] == [p["label"] for p in before]
    assert [p["score"] for p in after] == pytest.approx([p["score"] for p in before], abs=1e-6)
    assert set(after[0]["scores"]) == {"neg", "pos"}
    other = tmp_path / "other.csv"
    pd.DataFrame(make_reviews(40, seed=7)).to_csv(other, index=False)
    out = evaluate(result.run_dir, data=str(other))
    assert out["samples"] == 40 and 0.0 <= out["metrics"]["accuracy"] <= 1.0


def test_a_changed_data_file_does_not_change_the_saved_labels(tmp_path):
    """Before, an adapter run's base was rebuilt from the training data: a data file with other
    labels gave the head another size (or silently other names)."""
    result, data = _text_run(tmp_path, **{"finetune.peft": LORA})
    pd.DataFrame([{"text": r["text"], "label": lab} for r, lab in zip(make_reviews(30), "abc" * 10)]).to_csv(
        data, index=False)
    _, task, model = _load_run(result.run_dir)
    assert task.label_names == ["neg", "pos"]
    out = predict(result.run_dir, ["the film was good"])
    assert set(out[0]["scores"]) == {"neg", "pos"}


def test_vision_adapter_run_reloads_without_its_images(tmp_path):
    raw = tiny_recipe("image-classification", tmp_path / "fixtures")
    raw["output"] = {"dir": str(tmp_path / "runs"), "run_name": "run"}
    result = train(_as_file(tmp_path, raw), {"train.max_steps": 2, "finetune.peft": LORA})
    inputs = tiny_inputs("image-classification", tmp_path / "inputs")
    before = predict(result.run_dir, inputs)
    shutil.rmtree(raw["data"]["source"])
    after = predict(result.run_dir, inputs)
    assert [p["label"] for p in after] == [p["label"] for p in before]
    assert [p["score"] for p in after] == pytest.approx([p["score"] for p in before], abs=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without a GPU gives")
def test_a_qlora_adapter_is_reattached_to_a_base_quantised_the_same_way(tmp_path):
    """A QLoRA run's recipe says quantize: 4bit; reloading goes through the same quantisation step
    as training, which needs a CUDA GPU: here that is the clear error, not a silently fp32 base."""
    result, _ = _text_run(tmp_path, **{"finetune.peft": LORA})
    recipe_file = result.run_dir / "recipe.yaml"
    recipe = yaml.safe_load(recipe_file.read_text())
    recipe["finetune"]["peft"]["quantize"] = "4bit"
    recipe_file.write_text(yaml.safe_dump(recipe))
    with pytest.raises(OmnituneError, match="CUDA GPU"):
        predict(result.run_dir, ["the film was good"])
