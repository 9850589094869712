"""seq2seq: prompt-template loss masking, ROUGE/BLEU on hand-worked inputs, truncation and empty
targets counted, encoder-decoder layer groups, DDTP pairing, and a tiny Marian translation run on
real DDTP parallel sentences with its zero-shot baseline."""

from __future__ import annotations

import json
import math

import pytest
import torch

from omnitune.core.api import build_task, seed_everything, train
from omnitune.core.base.metrics import compute
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.loop.strategies import apply_strategy
from omnitune.text import ddtp
from omnitune.text.causal_lm import IGNORE
from omnitune.text.testing_seq2seq import make_summaries, tiny_seq2seq_recipe, write_jsonl


def _decoder_only(folder, **data):
    like = validate_recipe({"name": "x", "task": "seq2seq", "model": {"name": "m"},
                            "data": {"source": "s", "prompt_template": "{source}"}})
    raw = tiny_seq2seq_recipe(folder, like=like)
    raw["data"].update(data)
    return validate_recipe(raw)


def test_prompt_template_loss_covers_the_target_tokens_only(tmp_path):
    task = build_task(_decoder_only(tmp_path))
    bundle = task.build_datasets()
    ds = bundle.train
    tok = task.tokenizer
    for i in range(5):
        target_words = ds.targets[i].split()  # word-level tokenizer: one token per word, then </s>
        prompt = f"review: {ds.sources[i]} answer:".split()
        assert ds.labels[i] == [IGNORE] * len(prompt) + tok.convert_tokens_to_ids(target_words) + [tok.eos_token_id]
        assert ds.input_ids[i][:len(prompt)] == tok.convert_tokens_to_ids(prompt)
    seed_everything(0)
    model = task.build_model()
    batch = task.collate([ds[i] for i in range(4)])
    out = task.forward(model, batch, train=False)
    assert int(out["num_items"]) == sum(len(ds.targets[i].split()) + 1 for i in range(4))
    # The loss does not move when only the prompt tokens' predictions change: corrupt the labels'
    # prompt part (ignored anyway) by hand and recompute the NLL of the target positions alone.
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    logp = logits.log_softmax(-1)
    by_hand = sum(-logp[b, t, target[b, t]] for b in range(4) for t in range(target.shape[1]) if target[b, t] != IGNORE)
    assert float(out["loss_sum"].detach()) == pytest.approx(float(by_hand.detach()), rel=1e-5)


def test_rouge_bleu_chrf_on_hand_worked_inputs():
    # rougeL: LCS "the cat sat" (3) of 3 and 6 tokens -> F = 2*1*0.5/1.5 = 2/3; identical pair -> 1.
    assert compute("rougeL", ["the cat sat", "a b"], ["the cat sat on the mat", "a b"]) == pytest.approx((2 / 3 + 1) / 2)
    # rougeLsum: sentences split; reference sentences "the cat sat" (3 hits) and "a dog ran" ("dog ran",
    # 2 hits) -> P = R = 5/6.
    assert compute("rougeLsum", ["the cat sat. the dog ran."], ["The cat sat. A dog ran."]) == pytest.approx(5 / 6)
    # BLEU, one sentence: n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty).
    bleu = compute("bleu", ["the cat sat on the mat"], ["the cat sat on a mat"])
    assert bleu == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-3)
    assert compute("chrf", ["Wörterbuch"], ["Wörterbuch"]) == pytest.approx(100.0)
    assert compute("gen_len", [3, 5], [None, None]) == 4.0


def test_compute_metrics_scores_only_the_generated_subset(tmp_path):
    task = build_task(validate_recipe(tiny_seq2seq_recipe(tmp_path)))
    preds = [{"index": 0, "text": "the cat sat on the mat", "tokens": 6},
             {"index": 1, "text": None, "tokens": 0}]
    m = task.compute_metrics(preds, ["the cat sat on a mat", "anything at all"])
    assert task.main_metric == "bleu"  # data.kind: translation
    assert m["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-3)
    assert m["gen_len"] == 6 and m["gen_samples"] == 1


def test_truncation_and_empty_targets_are_counted(tmp_path):
    like = validate_recipe({"name": "x", "task": "seq2seq", "model": {"name": "m", "decoder": "m"},
                            "data": {"source": "s"}})
    raw = tiny_seq2seq_recipe(tmp_path, like=like)  # tiny BERT-to-BERT: one token per word + [CLS]/[SEP]
    rows = [{"document": " ".join(["the"] * n + ["good"]), "summary": "good " * k} for n, k in
            [(1, 1), (2, 1), (3, 3), (6, 1), (8, 4), (9, 1), (2, 2), (4, 1), (7, 1), (5, 2)] * 3]
    rows = [dict(r, document=r["document"] + f" {'film' if i % 2 else 'plot'}" * (i // 10)) for i, r in enumerate(rows)]
    rows.append({"document": "a very dull film", "summary": "   "})
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    raw["data"].update(source=str(data), drop_duplicates=False)
    raw["model"].update(max_source_length=6, max_target_length=3)
    task = build_task(validate_recipe(raw))
    bundle = task.build_datasets()
    report = bundle.report.to_dict()
    assert sum(report["dropped"].get(s, {}).get("empty text (summary)", 0) for s in report["dropped"]) == 1
    # Source tokens: words + 2; over 6 means more than 4 words. Target tokens: words + [SEP]; over 3
    # means more than 2 words.
    for split, ds in (("train", bundle.train), ("validation", bundle.validation), ("test", bundle.test)):
        src_cut = sum(len(s.split()) > 4 for s in ds.sources)
        tgt_cut = sum(len(t.split()) > 2 for t in ds.targets)
        assert any(n.startswith(f"{split}: {src_cut} of {len(ds)} sources truncated to 6") for n in report["notes"])
        assert any(n.startswith(f"{split}: {tgt_cut} of {len(ds)} targets truncated to 3") for n in report["notes"])
        assert all(len(x) <= 6 for x in ds.input_ids) and all(len(x) <= 3 for x in ds.labels)
        assert all(x[-1] == task.tokenizer.sep_token_id for x in ds.input_ids + ds.labels)
    assert any("cross-attention" in n for n in report["notes"])


def test_freezing_the_encoder_through_layer_groups(tmp_path):
    task = build_task(validate_recipe(tiny_seq2seq_recipe(tmp_path)))
    model = task.build_model()
    groups = task.layer_groups(model)
    names = [g.name for g in groups]
    assert names == ["embeddings", "encoder_0", "encoder_1", "decoder_0", "decoder_1", "head"]
    apply_strategy(model, groups, strategy="partial", freeze_layers=3)  # embeddings + both encoder blocks
    for name, p in model.named_parameters():
        if ".encoder.layers." in name:
            assert not p.requires_grad, name
        elif ".decoder.layers." in name:
            assert p.requires_grad, name


def test_ddtp_pairs_by_description_md5(tmp_path):
    en = tmp_path / "deb_i18n_Translation-en"
    de = tmp_path / "deb_i18n_Translation-de"
    en.write_text("Package: a\nDescription-md5: 111\nDescription-en: text editor\n long part\n .\n more\n\n"
                  "Package: b\nDescription-md5: 222\nDescription-en: Foo\n\n"
                  "Package: c\nDescription-md5: 333\nDescription-en: text editor\n")
    de.write_text("Package: a\nDescription-md5: 111\nDescription-de: Texteditor\n langer Teil\n\n"
                  "Package: b\nDescription-md5: 222\nDescription-de: foo\n\n"
                  "Package: c\nDescription-md5: 333\nDescription-de: Ein Texteditor\n\n"
                  "Package: d\nDescription-md5: 444\nDescription-de: Waise\n")
    assert ddtp.parse_index(en, "en")["111"] == {"package": "a", "short": "text editor", "long": "long part\n\nmore"}
    counts = ddtp.write_parallel(tmp_path, tmp_path / "out.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"en": "text editor", "de": "Texteditor", "package": "a", "description_md5": "111"}]
    assert counts == {"no English original": 1, "not translated": 1, "repeated English": 1, "pairs": 1, "written": 1}
    sample = [json.loads(x) for x in ddtp.SAMPLE.read_text().splitlines()]
    assert len(sample) == 60 and all(r["en"] and r["de"] and len(r["description_md5"]) == 32 for r in sample)


def test_tiny_marian_translation_run_with_zero_shot_baseline(tmp_path):
    raw = tiny_seq2seq_recipe(tmp_path)
    raw["train"].update(epochs=6, batch_size=8, lr=5e-3)
    raw["eval"] = {"baseline": True}
    raw["output"] = {"dir": str(tmp_path / "runs"), "run_name": "run"}
    result = train(validate_recipe(raw))
    m = result.metrics
    for split in ("baseline_test", "test", "validation"):
        assert {"bleu", "chrf", "rougeL", "rougeLsum", "gen_len", "loss"} <= set(m[split])
        assert all(math.isfinite(v) for v in m[split].values())
    assert m["selected_by"] == "bleu"
    # 48 real pairs teach the target language's token distribution, not yet translation: the
    # held-out loss drops (measured 5.99 -> 5.68), BLEU stays near 0.
    assert m["test"]["loss"] < m["baseline_test"]["loss"] - 0.1
    assert m["test"]["gen_samples"] == m["baseline_test"]["gen_samples"] == 6  # same fixed subset
    report = (result.run_dir / "report.md").read_text()
    assert "Worst generations" in report and "Zero-shot (eval.baseline" in report
    out = __import__("omnitune").core.api.predict(result.run_dir, ["Dutch dictionary for Aspell"])
    assert isinstance(out[0]["generated"], str)


def test_hub_style_translation_column_of_dicts(tmp_path):
    from omnitune.text.testing_seq2seq import ddtp_pairs

    rows = [{"translation": {"en": p["en"], "de": p["de"]}} for p in ddtp_pairs()[:30]]
    rows.append({"translation": {"en": "no German here"}})
    raw = tiny_seq2seq_recipe(tmp_path)
    raw["data"].update(source=str(write_jsonl(tmp_path / "nested.jsonl", rows)),
                       source_column="translation.en", target_column="translation.de")
    task = build_task(validate_recipe(raw))
    bundle = task.build_datasets()
    dropped = bundle.report.to_dict()["dropped"]
    assert sum(d.get("missing text (translation.de)", 0) for d in dropped.values()) == 1
    assert len(bundle.train) + len(bundle.validation) + len(bundle.test) == 30
    assert bundle.train.sources[0] in {p["en"] for p in ddtp_pairs()[:30]}


@pytest.mark.parametrize("arch", ["t5", "bart", "marian"])
def test_encoder_decoder_groups_of_t5_bart_marian(arch):
    from transformers import (BartConfig, BartForConditionalGeneration, MarianConfig, MarianMTModel, T5Config,
                              T5ForConditionalGeneration)

    from omnitune.core.loop.strategies import check_groups_cover
    from omnitune.text.seq2seq import encoder_decoder_groups, freeze_fixed, shift_right

    torch.manual_seed(0)
    small = dict(vocab_size=50, d_model=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    if arch == "t5":
        model = T5ForConditionalGeneration(T5Config(**small, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=3,
                                                    num_heads=2))
    else:
        cls, cfg = (BartForConditionalGeneration, BartConfig) if arch == "bart" else (MarianMTModel, MarianConfig)
        model = freeze_fixed(cls(cfg(**small, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
                                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                                     max_position_embeddings=32)))
    groups = encoder_decoder_groups(model)
    check_groups_cover(model, groups)
    assert [g.name for g in groups] == ["embeddings", "encoder_0", "encoder_1", "decoder_0", "decoder_1",
                                        "decoder_2", "head"]
    assert any(True for _ in groups[-1].parameters())
    # The encoder groups hold all of the encoder but its token embeddings (T5's final norm included).
    encoder_groups = {id(p) for g in groups[1:3] for p in g.parameters()}
    encoder = {id(p) for p in model.get_encoder().parameters()} - {id(p) for p in groups[0].parameters()} \
        - {id(p) for p in model.get_input_embeddings().parameters()}
    assert encoder == encoder_groups
    labels = torch.tensor([[5, 6, 1, IGNORE]])
    assert shift_right(model, labels).tolist() == [[0, 5, 6, 1]]
