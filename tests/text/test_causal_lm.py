"""Causal LM task on a tiny random Llama: loss masking, perplexity, LoRA training, the SmolLM2 recipe."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from omnitune.core.api import _load_run, build_task, predict, train
from omnitune.core.recipe import load_recipe, validate_recipe

from ..conftest import FILLER, NEGATIVE, POSITIVE, write_recipe

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]


def make_tiny_llama(folder: Path) -> Path:
    """A word-level tokenizer and a random 2-layer Llama (tied embeddings, like SmolLM2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = [*SPECIAL, *POSITIVE, *NEGATIVE, *FILLER, "review:", "answer:", "yes", "no"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                         # With the usual std 0.02 the tied (frozen under LoRA) embeddings bound every
                         # logit below ~0.7, so no adapter could make an answer likely; pretrained
                         # embeddings are far larger than that.
                         initializer_range=0.3)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def qa_csv(tmp_path_factory) -> Path:
    """review -> yes/no (positive?): the response is decided by one word of the prompt."""
    import pandas as pd

    rng = random.Random(0)
    rows = []
    for i in range(200):
        pos = i % 2 == 0
        words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if pos else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "answer": "yes" if pos else "no"})
    path = tmp_path_factory.mktemp("qa") / "qa.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


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
    assert out["loss"].item() == pytest.approx(nll.mean().item(), rel=1e-4)


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
    from omnitune.core.strategies import check_groups_cover

    task = build_task(validate_recipe(lm_recipe(tiny_llama, qa_csv, tmp_path)))
    model = task.build_model()
    groups = task.layer_groups(model)
    check_groups_cover(model, groups)  # raises when the tied LM head shows up in two groups
    assert [g.name for g in groups] == ["embeddings", "block_0", "block_1", "head"]


def test_tiny_run_of_shipped_smollm2_recipe(tmp_path, tiny_llama, qa_csv):
    """The shipped recipe's settings (LoRA, schedule, templates' shape) on the tiny Llama and data."""
    from omnitune.core.api import train

    result = train("text/smollm2-rotten-tomatoes-lora", {
        "model.name": str(tiny_llama), "data.source": str(qa_csv), "data.max_samples": 48,
        "data.max_eval_samples": 16, "data.prompt_template": "review: {review} answer:",
        "data.response_template": " {answer}", "train.max_steps": 2, "train.precision": "fp32",
        "output.dir": str(tmp_path), "output.run_name": "run"})
    assert result.metrics["steps"] == 2 and result.metrics["test"]["perplexity"] >= 1.0
    assert (result.run_dir / "model" / "adapter_config.json").exists()


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
