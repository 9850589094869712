"""Causal LM task on a tiny random Llama: loss masking, perplexity, LoRA training, the SmolLM2 recipe."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from omnitune.core.api import _load_run, build_task, predict, train
from omnitune.core.base.recipe import load_recipe, validate_recipe
from omnitune.text.testing import make_qa_rows, make_tiny_llama, write_csv

from ..conftest import write_recipe


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def qa_csv(tmp_path_factory) -> Path:
    """review -> yes/no (positive?): the response is decided by one word of the prompt."""
    return write_csv(tmp_path_factory.mktemp("qa") / "qa.csv", make_qa_rows(200))


def lm_recipe(model: Path, data: Path, out: Path, **sections) -> dict:
    recipe = {
        "name": "tiny-lm", "task": "causal-lm", "seed": 0,
        "model": {"name": str(model), "max_length": 32},
        "data": {"source": str(data), "prompt_template": "review: {review} answer:",
                 "response_template": " {answer}"},
        "train": {"epochs": 3, "batch_size": 16, "lr": 1e-2, "precision": "fp32", "log_every": 5},
        "output": {"dir": str(out), "run_name": "run"},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def test_loss_covers_response_tokens_only(tmp_path, tiny_llama, qa_csv):
    rec = validate_recipe(lm_recipe(tiny_llama, qa_csv, tmp_path))
    task = build_task(rec)
    bundle = task.build_datasets()
    sample = bundle.train[0]
    tok = task.tokenizer
    # The response (" yes"/" no") and </s> are labelled; every prompt token is ignored.
    labelled = [t for t, lab in zip(sample["input_ids"], sample["labels"]) if lab != -100]
    assert tok.convert_ids_to_tokens(labelled)[-1] == "</s>" and len(labelled) == 2
    assert tok.convert_ids_to_tokens(labelled)[0] in ("yes", "no")
    # Perplexity is exp(mean NLL) over labelled tokens, computed independently here.
    model = task.build_model().eval()
    batch = task.collate([bundle.validation[i] for i in range(4)])
    with torch.no_grad():
        out = task.forward(model, batch, train=False)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = logits[:, :-1].log_softmax(-1)
    target = batch["labels"][:, 1:]
    mask = target != -100
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask]
    preds, refs = task.predict_batch(model, batch, out)
    metrics = task.compute_metrics(preds, refs)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-4)
    assert out["loss_sum"].item() == pytest.approx(nll.sum().item(), rel=1e-4)
    assert int(out["num_items"]) == int(mask.sum())


def test_lora_lowers_perplexity_and_saves_adapter_only(tmp_path, tiny_llama, qa_csv):
    peft = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "o_proj",
                                                                                       "down_proj"]}
    path = write_recipe(tmp_path / "r.yaml", lm_recipe(tiny_llama, qa_csv, tmp_path, finetune={"peft": peft},
                                                       train={"epochs": 8, "lr": 3e-2},
                                                       eval={"baseline": True}))
    result = train(path)
    before, after = result.metrics["baseline_test"]["perplexity"], result.metrics["test"]["perplexity"]
    # Random init: ~vocab-sized perplexity; the answer is one of two words plus </s>, so a trained
    # adapter gets far below that.
    assert before > 10 and after < 3, (before, after)
    model_dir = result.run_dir / "model"
    assert (model_dir / "adapter_model.safetensors").is_file() and not (model_dir / "model.safetensors").exists()
    share = result.metrics["parameters"]
    assert share["trainable"] < share["total"] / 5
    # The tied LM head / embeddings are not trained under LoRA, and loading restores the adapter.
    _, task, model = _load_run(result.run_dir)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "embed_tokens" in n)
    out = predict(result.run_dir, ["good film the plot"])
    assert out[0]["completion"].split()[0] == "yes"


def test_layer_groups_keep_tied_head_once(tiny_llama, qa_csv, tmp_path):
    from omnitune.core.loop.strategies import check_groups_cover

    task = build_task(validate_recipe(lm_recipe(tiny_llama, qa_csv, tmp_path)))
    model = task.build_model()
    groups = task.layer_groups(model)
    check_groups_cover(model, groups)  # raises when the tied LM head shows up in two groups
    assert [g.name for g in groups] == ["embeddings", "block_0", "block_1", "head"]


def test_smollm2_recipe_validates():
    rec = load_recipe("text/smollm2-rotten-tomatoes-lora")
    assert rec.task == "causal-lm" and rec.finetune.peft.method == "lora"


@pytest.mark.slow
def test_smollm2_lora_short_run(tmp_path):
    """Real SmolLM2-135M (from the GGUF asset): a few LoRA steps lower the response perplexity."""
    result = train("text/smollm2-rotten-tomatoes-lora", {
        "data.max_samples": 64, "data.max_eval_samples": 32, "train.max_steps": 8, "train.batch_size": 8,
        "eval.baseline": True, "output.dir": str(tmp_path)})
    assert result.metrics["test"]["perplexity"] < result.metrics["baseline_test"]["perplexity"]
    assert (result.run_dir / "model" / "adapter_model.safetensors").stat().st_size < 5e6
