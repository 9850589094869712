"""PEFT: only adapter parameters train, adapter-only save/load, resume, merge, switching, QLoRA error.

LoRA and IA3 come through peft, bottleneck adapters through core/adapters/bottleneck.py; the tests that are
parametrised over the method hold both to the same contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omnitune.core.adapters import peft as peft_lib
from omnitune.core.api import _load_run, evaluate, train
from omnitune.core.cli import main as cli_main
from omnitune.core.base.errors import OmnituneError
from omnitune.core.loop.trainer import Interrupted

from ..conftest import make_tokenizer_and_model, text_recipe, write_recipe

LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
BOTTLENECK = {"method": "bottleneck", "r": 8, "dropout": 0.0}
METHODS = {"lora": LORA, "bottleneck": BOTTLENECK}


@pytest.fixture(scope="module")
def base(tmp_path_factory, reviews_csv) -> Path:
    """A briefly fully fine-tuned tiny BERT as the adapters' base. A freshly random BERT maps every
    text to nearly the same [CLS] vector, which no adapter on a frozen random base can separate;
    a real pretrained base does not have that problem, so the fixture gives the adapters one.
    Seeded (the shared tiny_bert is not), so the adapters' numbers are the same every session."""
    tmp = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    tiny_bert = make_tokenizer_and_model(tmp / "random-bert")
    recipe = text_recipe(tiny_bert, reviews_csv, tmp, train={"epochs": 10})
    return train(write_recipe(tmp / "base.yaml", recipe)).run_dir / "model"


def _run(tmp_path, base, reviews_csv, name, peft=LORA, callbacks=(), **sections):
    sections.setdefault("data", {"max_samples": 96})
    sections.setdefault("train", {"epochs": 2})
    recipe = text_recipe(base, reviews_csv, tmp_path, finetune={"peft": peft}, **sections)
    recipe["output"]["run_name"] = name
    return train(write_recipe(tmp_path / f"{name}.yaml", recipe), callbacks=list(callbacks))


@pytest.mark.parametrize("method", ["lora", "ia3", "bottleneck"])
def test_only_adapter_and_head_parameters_change(tmp_path, base, reviews_csv, method):
    seen = {}

    def snapshot_after_first_step(trainer):
        if trainer.state.step == 1:
            seen["model"] = trainer._unwrapped
            seen["start"] = {n: p.detach().clone() for n, p in trainer._unwrapped.named_parameters()}

    peft = {"method": method} if method == "ia3" else METHODS[method]
    result = _run(tmp_path, base, reviews_csv, method, peft=peft, callbacks=[snapshot_after_first_step])
    model, start = seen["model"], seen["start"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), start[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    marker = {"lora": "lora_", "ia3": "ia3_", "bottleneck": "omnitune_bottleneck"}[method]
    # The new head trains beside the adapter: peft trains a copy of it ("modules_to_save"), core's
    # bottleneck adapters train it in place.
    head = ("modules_to_save",) if method != "bottleneck" else ("classifier.", "bert.pooler.")
    assert changed, "training changed nothing"
    assert changed <= trainable
    assert all(marker in n or n.startswith(head) or any(h in n for h in head) for n in trainable), sorted(trainable)[:5]
    assert any(marker in n for n in changed) and any(any(h in n for h in head) for n in changed)
    # The base's attention/FFN weights are the pretrained ones from the folder (never updated).
    original = load_file(str(base / "model.safetensors"))
    key = "encoder.layer.0.attention.self.value.weight"
    name = f"bert.{key.replace('.weight', '.base_layer.weight')}" if method != "bottleneck" else f"bert.{key}"
    torch.testing.assert_close(dict(model.named_parameters())[name].detach(), original["bert." + key], rtol=0, atol=0)
    share = result.metrics["parameters"]
    assert 0 < share["trainable"] < share["total"] / 3 and share["peft"] == method


def test_fresh_bottleneck_adapter_is_the_identity_and_sits_after_attention_and_ffn():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=32, vocab_size=30)).eval()
    ids = torch.randint(0, 30, (2, 7))
    before = bert(input_ids=ids).logits
    hidden = bert.bert(input_ids=ids).last_hidden_state
    wrapped = peft_lib.apply_peft(bert, [bert.bert.pooler, bert.classifier], **BOTTLENECK)
    sites = sorted(n for n, m in bert.named_modules() if n.endswith(".omnitune_bottleneck"))
    assert len(sites) == 4  # 2 layers x (attention output, feed-forward output)
    assert {s.split(".")[-3] for s in sites} == {"output"} and sum("attention" in s for s in sites) == 2
    torch.testing.assert_close(wrapped(input_ids=ids).logits, before, rtol=0, atol=0)
    # Once the adapter's weights move away from their start, it changes what the model computes.
    with torch.no_grad():
        for n, p in bert.named_parameters():
            if "omnitune_bottleneck" in n and n.endswith("weight"):
                p.normal_(std=0.5)
    assert (bert.bert(input_ids=ids).last_hidden_state - hidden).abs().max() > 1e-2


@pytest.mark.parametrize("method", METHODS)
def test_adapter_only_save_load_round_trip(tmp_path, base, reviews_csv, method):
    result = _run(tmp_path, base, reviews_csv, "rt", peft=METHODS[method])
    model_dir = result.run_dir / "model"
    assert (model_dir / "adapter_model.safetensors").is_file() and not (model_dir / "model.safetensors").exists()
    full_size = (base / "model.safetensors").stat().st_size
    assert (model_dir / "adapter_model.safetensors").stat().st_size < full_size / 4
    assert (result.run_dir / "checkpoints" / "last" / "model.safetensors").stat().st_size < full_size / 4
    # Reloaded (base rebuilt + adapter attached), the model scores the test split exactly as the
    # trained model did at the end of training.
    again = evaluate(result.run_dir)["metrics"]
    for k in ("loss", "accuracy"):
        assert again[k] == pytest.approx(result.metrics["test"][k], abs=1e-5), k
    assert result.metrics["test"]["accuracy"] > 0.8


def _logits(model, task, texts):
    enc = task.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**{k: v for k, v in enc.items() if k != "token_type_ids"}).logits


def test_merged_model_matches_base_plus_adapter(tmp_path, base, reviews_csv):
    result = _run(tmp_path, base, reviews_csv, "merge", peft={**LORA, "r": 8})
    _, task, peft_model = _load_run(result.run_dir)
    texts = ["the film was great", "boring plot and weak actors", "a story"]
    with_adapter = _logits(peft_model, task, texts)
    with peft_model.disable_adapter():
        base_only = _logits(peft_model, task, texts)
    assert (with_adapter - base_only).abs().max() > 1e-3  # the adapter matters, so equality below is not vacuous
    out = tmp_path / "merged"
    assert cli_main(["adapters", "merge", str(result.run_dir), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    merged = task.load_pretrained(out)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, task, texts), with_adapter, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_resumed_adapter_run_matches_uninterrupted(tmp_path, base, reviews_csv, method):
    # Adapter dropout on, so the resumed run must restore the RNG to agree.
    peft = {**METHODS[method], "dropout": 0.1}
    sections = {"train": {"epochs": 2, "eval_every": 5}}
    full = _run(tmp_path, base, reviews_csv, "full", peft=peft, **sections)

    def stop_at_7(trainer):
        if trainer.state.step == 7:
            trainer.request_stop()

    with pytest.raises(Interrupted) as err:
        _run(tmp_path, base, reviews_csv, "cut", peft=peft, callbacks=[stop_at_7], **sections)
    resumed = train(None, resume=err.value.run_dir)
    a = load_file(str(full.run_dir / "model" / "adapter_model.safetensors"))
    b = load_file(str(resumed.run_dir / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(("lora_A" if method == "lora" else "down.weight") in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert resumed.metrics["test"]["loss"] == pytest.approx(full.metrics["test"]["loss"], abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_adapter_library_switching(tmp_path, base, reviews_csv, capsys, method):
    # Two adapters on one base: one trained on the labels as they are, one on swapped labels.
    import pandas as pd

    swapped = tmp_path / "swapped.csv"
    frame = pd.read_csv(reviews_csv)
    frame["label"] = frame["label"].map({"pos": "neg", "neg": "pos"})
    frame.to_csv(swapped, index=False)
    a = _run(tmp_path, base, reviews_csv, "plain", peft={**METHODS[method], "adapter_name": "plain"})
    # Unlearning the base's sentiment takes more than keeping it: all rows, 4 epochs, a higher LR.
    recipe = text_recipe(base, swapped, tmp_path, finetune={"peft": {**METHODS[method], "adapter_name": "swapped"}},
                         train={"epochs": 4, "lr": 1e-2})
    recipe["output"]["run_name"] = "swapped"
    b = train(write_recipe(tmp_path / "swapped.yaml", recipe))
    lib = tmp_path / "library"
    assert cli_main(["adapters", "add", str(lib), str(a.run_dir)]) == 0
    assert cli_main(["adapters", "add", str(lib), str(b.run_dir)]) == 0
    assert cli_main(["adapters", "list", str(lib)]) == 0
    listed = capsys.readouterr().out
    assert "plain" in listed and "swapped" in listed
    names = [x["name"] for x in peft_lib.list_adapters(lib / "model")]
    assert sorted(names) == ["plain", "swapped"]

    _, task, model = _load_run(lib, adapter="plain")
    texts = ["great superb fun", "awful dull boring"]
    pos = task.label_names.index("pos")
    plain = _logits(model, task, texts).softmax(-1)[:, pos]
    peft_lib.switch_adapter(model, "swapped")
    flipped = _logits(model, task, texts).softmax(-1)[:, pos]
    # Switching adapters flips the decisions: the swapped adapter calls the positive text negative.
    assert plain[0] > 0.5 > plain[1]
    assert flipped[0] < 0.5 < flipped[1]
    # Each adapter evaluates on its own: the swapped one scores badly on the original labels.
    acc_plain = evaluate(lib, adapter="plain")["metrics"]["accuracy"]
    acc_swapped = evaluate(lib, adapter="swapped")["metrics"]["accuracy"]
    assert acc_plain > 0.8 > 0.2 > acc_swapped


def test_bottleneck_merge_and_mixed_library_are_clear_errors(tmp_path, base, reviews_csv, capsys):
    result = _run(tmp_path, base, reviews_csv, "bn", peft=BOTTLENECK, train={"epochs": 1})
    out = tmp_path / "merged"
    assert cli_main(["adapters", "merge", str(result.run_dir), "--out", str(out)]) != 0
    assert "no base weights" in capsys.readouterr().err and not out.exists()
    # A library holds one kind: peft adapters and bottleneck adapters cannot sit on one model.
    lora = _run(tmp_path, base, reviews_csv, "lora", peft=LORA, train={"epochs": 1})
    lib = tmp_path / "library"
    assert cli_main(["adapters", "add", str(lib), str(result.run_dir)]) == 0
    assert cli_main(["adapters", "add", str(lib), str(lora.run_dir)]) == 2
    assert "cannot share a library" in capsys.readouterr().err
    assert [a["method"] for a in peft_lib.list_adapters(lib / "model")] == ["bottleneck"]
    with pytest.raises(OmnituneError, match="needs method .lora."):
        _run(tmp_path, base, reviews_csv, "q", peft={**BOTTLENECK, "quantize": "4bit"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a CUDA GPU")
def test_qlora_on_cpu_fails_before_any_work(tmp_path, base, reviews_csv):
    with pytest.raises(OmnituneError, match="CUDA GPU"):
        _run(tmp_path, base, reviews_csv, "q", peft={**LORA, "quantize": "4bit"})
    assert not (tmp_path / "q").exists()  # no run folder was made


def test_peft_needs_full_strategy(tmp_path, base, reviews_csv):
    from omnitune.core.base.errors import RecipeError
    from omnitune.core.base.recipe import load_recipe

    recipe = text_recipe(base, reviews_csv, tmp_path,
                         finetune={"peft": LORA, "strategy": "feature_extraction"})
    with pytest.raises(RecipeError, match="finetune.*peft"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_default_targets_per_architecture():
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    bert = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=32, vocab_size=20))
    assert peft_lib.default_target_modules(bert, [bert.classifier], "lora") == ["query", "value"]
    assert peft_lib.default_modules_to_save(bert, [bert.bert.pooler, bert.classifier]) == ["bert.pooler", "classifier"]
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=32, vocab_size=20,
                                         tie_word_embeddings=True))
    # The final norm and the tied LM head stay frozen under LoRA.
    assert peft_lib.default_modules_to_save(llama, [llama.model.norm, llama.lm_head]) == []
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3, groups=4), torch.nn.Flatten(),
                               torch.nn.Linear(4, 2))
    assert peft_lib.default_target_modules(conv, [conv[3]], "lora") == ["0"]
    assert peft_lib.default_target_modules(bert, [bert.classifier], "bottleneck") == ["attention.output.dense",
                                                                                       "output.dense"]
    wrapped = peft_lib.apply_peft(llama, [llama.model.norm, llama.lm_head], method="bottleneck", r=4)
    sites = [n for n, m in llama.named_modules() if n.endswith(".omnitune_bottleneck")]
    assert len(sites) == 2 and wrapped.peft_config["default"]["modules_to_save"] == []
    assert {s.split(".")[-2] for s in sites} == {"o_proj", "down_proj"}
    # Without a per-architecture entry, bottleneck adapters follow the blocks between stem and head.
    assert peft_lib.default_target_modules(conv, [conv[3]], "bottleneck", block_modules=[conv[1]]) == ["1"]
