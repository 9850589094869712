"""Chat SFT: conversation layouts, assistant-only labels, packing, generation in evaluation.

Every model and tokenizer is built from configs (text/testing_chat.py); expected tokens and scores
are written out by hand from the tiny template ``<|role|> content <|end|> ``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from omnitune.core.base import assets
from omnitune.core.api import build_task, predict, train
from omnitune.core.base.errors import DataError, RecipeError
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.base.task import DataReport
from omnitune.text import chat_data as cd
from omnitune.text.chat import ChatTask
from omnitune.text.testing_chat import write_jsonl

from ..fixtures import tiny_recipe


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chat")
    tiny_recipe("chat", folder)  # builds the tiny model and data once
    return folder


def recipe(folder: Path, **sections) -> dict:
    raw = tiny_recipe("chat", folder)
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def task_for(folder: Path, **sections) -> ChatTask:
    return build_task(validate_recipe(recipe(folder, **sections)))


CONV = [
    {"role": "system", "content": "answer yes or no"},
    {"role": "user", "content": "review: good film . positive ?"},
    {"role": "assistant", "content": "yes"},
    {"role": "user", "content": "review: bad plot . positive ?"},
    {"role": "assistant", "content": "no"},
]


def test_only_assistant_tokens_carry_loss(fixture):
    task = task_for(fixture)
    ids, labels = cd.encode_conversation(task.tokenizer, CONV, max_length=64)
    tokens = task.tokenizer.convert_ids_to_tokens(ids)
    # Worked out by hand from the template: 28 tokens, the replies and their <|end|> are 15, 16, 26, 27.
    assert tokens == ["<|system|>", "answer", "yes", "or", "no", "<|end|>",
                      "<|user|>", "review:", "good", "film", ".", "positive", "?", "<|end|>",
                      "<|assistant|>", "yes", "<|end|>",
                      "<|user|>", "review:", "bad", "plot", ".", "positive", "?", "<|end|>",
                      "<|assistant|>", "no", "<|end|>"]
    labelled = [i for i, y in enumerate(labels) if y != cd.IGNORE]
    assert labelled == [15, 16, 26, 27]
    assert all(labels[i] == ids[i] for i in labelled)
    # The system turn says "yes or no" too: those tokens carry no loss.
    assert labels[2] == labels[4] == cd.IGNORE


def test_truncation_keeps_labels_aligned(fixture):
    task = task_for(fixture)
    ids, labels = cd.encode_conversation(task.tokenizer, CONV, max_length=17)
    assert len(ids) == len(labels) == 17 and [i for i, y in enumerate(labels) if y != cd.IGNORE] == [15, 16]


@pytest.mark.slow  # fetches the SmolLM2 asset on first use (30 s, 0.5 GB), as the slow suite's other SmolLM2 tests do
def test_assistant_spans_on_smollm2_chatml_tokens():
    """SmolLM2's own template and BPE tokenizer: the labelled tokens decode to the replies and their
    <|im_end|> turn ends, nothing of the (default) system turn or the user's. In the slow suite, not
    skipped when the asset is missing: on a clean CI machine the fast suite runs before any fetch, so
    a skip there meant the test never ran."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.resolve("asset:smollm2-135m"))
    conv = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."}]
    ids, labels = cd.encode_conversation(tok, conv, max_length=200)
    assert tok.decode([y for y in labels if y != cd.IGNORE]) == "Paris.<|im_end|>\nRome.<|im_end|>\n"


def test_a_template_that_drops_the_assistant_content_is_an_error(fixture):
    task = task_for(fixture, data={"chat_template": "{% for m in messages %}{{ m['role'] }} {% endfor %}"})
    with pytest.raises(DataError, match="drops the assistant content"):
        cd.encode_conversation(task.tokenizer, CONV, max_length=64)


def test_a_tokenizer_without_template_needs_a_declared_one(fixture, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixture / "tiny-chat-llama")
    tok.chat_template = None
    with pytest.raises(RecipeError, match="data.chat_template"):
        cd.set_chat_template(tok, None, "tiny")
    cd.set_chat_template(tok, "chatml", "tiny")
    assert cd.render(tok, CONV[1:3]) == "<|im_start|>user\nreview: good film . positive ?<|im_end|>\n" \
                                        "<|im_start|>assistant\nyes<|im_end|>\n"


def test_bad_rows_are_counted_and_dropped(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "no reply here"}]},
        {"messages": [{"role": "user", "content": "empty reply"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}]},
        {"messages": "not json"},
    ]
    report = DataReport(source="rows")
    convs = cd.rows_to_conversations(pd.DataFrame(rows), layout="auto", messages_column="messages",
                                     prompt_template="", response_template="", system_prompt=None, split="train",
                                     where="rows", report=report)
    assert len(convs) == 1
    assert report.dropped["train"] == {"no assistant turn": 2, "unknown role 'robot'": 1,
                                       "malformed messages (not a non-empty list)": 1}


def test_instruction_columns_become_a_conversation_with_the_system_prompt():
    df = pd.DataFrame([{"instruction": "Add", "input": "2 and 3", "output": "5"},
                       {"instruction": "Say", "input": "hi", "output": None}])
    report = DataReport(source="rows")
    convs = cd.rows_to_conversations(df, layout="auto", messages_column="messages",
                                     prompt_template="{instruction}: {input}", response_template="{output}",
                                     system_prompt="Be brief.", split="train", where="rows", report=report)
    assert convs == [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add: 2 and 3"},
                      {"role": "assistant", "content": "5"}]]
    assert report.dropped["train"] == {"missing field (output)": 1}


def test_packed_and_unpacked_losses_agree(fixture):
    task = task_for(fixture)
    bundle = task.build_datasets()
    torch.manual_seed(0)
    model = task.build_model().eval()
    samples = [bundle.train[i] for i in range(8)]
    packed = cd.pack([(s["input_ids"], s["labels"]) for s in samples], max_length=48)
    assert len(packed) < len(samples) and sum(p.conversations for p in packed) == len(samples)
    pk = [{"input_ids": p.input_ids, "labels": p.labels, "position_ids": p.position_ids, "index": i}
          for i, p in enumerate(packed)]
    with torch.no_grad():
        plain = task.forward(model, task.collate(samples), train=False)
        pack_out = task.forward(model, task.collate(pk), train=False)
        # The same packed tokens with positions running on (attention crossing conversations)
        # give another loss: the agreement above is the block-diagonal mask's doing.
        crossing = task.collate(pk)
        crossing["position_ids"] = torch.arange(crossing["input_ids"].shape[1]).expand_as(crossing["input_ids"])
        leak = task.forward(model, crossing, train=False)
    assert int(pack_out["num_items"]) == int(plain["num_items"])
    assert float(pack_out["loss_sum"]) == pytest.approx(float(plain["loss_sum"]), rel=1e-5)
    assert abs(float(leak["loss_sum"]) - float(plain["loss_sum"])) > 1e-3


def test_packing_in_build_datasets(fixture):
    task = task_for(fixture, data={"packing": True})
    bundle = task.build_datasets()
    assert len(bundle.train) < 160 and all(len(x) <= 48 for x in bundle.train.input_ids)
    assert "packed into" in " ".join(bundle.report.notes)
    batch = task.collate([bundle.train[0], bundle.train[1]])
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape


def test_generation_subset_is_fixed_and_metrics_are_scored(fixture):
    task = task_for(fixture, data={"answer_pattern": r"(?i)^\W*(yes|no)\b", "generation_metrics": ["exact_match", "rougeL"]})
    bundle = task.build_datasets()
    chosen = [i for i, g in enumerate(bundle.validation.generate) if g]
    again = [i for i, g in enumerate(task_for(fixture).build_datasets().validation.generate) if g]
    assert len(chosen) == 4 and chosen == again
    preds = [{"nll_sum": 2.0, "tokens": 2, "reply": r, "index": i, "split": "validation"}
             for i, r in enumerate(["Yes.", "no", "yes, it is", None])]
    metrics = task.compute_metrics(preds, ["yes", "yes", "yes", "no"])
    # By hand: replies for 3 samples; "Yes." == "yes" after normalisation; parsed labels yes/no/yes.
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["answer_accuracy"] == pytest.approx(2 / 3)
    assert metrics["rougeL"] == pytest.approx((1 + 0 + 2 * (1 * 1 / 3) / (1 + 1 / 3)) / 3)
    assert metrics["token_nll"] == pytest.approx(1.0)


def test_a_run_reports_zero_shot_beside_fine_tuned_and_predicts_replies(fixture, tmp_path):
    raw = recipe(fixture, model={"generation": {"max_new_tokens": 3, "eval_samples": 10}},
                 train={"epochs": 3}, eval={"baseline": True},
                 output={"dir": str(tmp_path), "run_name": "run"})
    result = train(validate_recipe(raw))
    m = result.metrics
    assert m["baseline_test"]["exact_match"] < m["test"]["exact_match"]
    report = (result.run_dir / "report.md").read_text()
    assert "| prompt | reference | zero-shot | fine-tuned |" in report
    rows = [json.loads(line) for line in (result.run_dir / "generations_test.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all({"prompt", "reference", "zero-shot", "fine-tuned"} <= set(r) for r in rows)
    assert sum(r["fine-tuned"] == r["reference"] for r in rows) / 10 == pytest.approx(m["test"]["exact_match"])
    out = predict(result.run_dir, ["review: the film was good . positive ?"])
    assert out[0]["input"].startswith("review:") and isinstance(out[0]["reply"], str)


def test_conversations_file_with_json_string_cells(tmp_path, fixture):
    path = tmp_path / "chats.csv"
    rows = [{"messages": json.dumps([{"role": "user", "content": "review: good . positive ?"},
                                     {"role": "assistant", "content": "yes"}])}] * 3
    pd.DataFrame(rows).to_csv(path, index=False)
    report = DataReport(source=str(path))
    from omnitune.core.base.data import read_table

    convs = cd.rows_to_conversations(read_table(path), layout="messages", messages_column="messages",
                                     prompt_template="", response_template="", system_prompt=None, split="train",
                                     where=str(path), report=report)
    assert len(convs) == 3 and convs[0][1]["content"] == "yes"


def test_bad_answer_pattern_is_a_recipe_error(fixture):
    with pytest.raises(RecipeError, match="answer_pattern"):
        validate_recipe(recipe(fixture, data={"answer_pattern": "(unclosed"}))


def test_write_jsonl_roundtrip(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"a": 1}])
    assert json.loads(path.read_text()) == {"a": 1}


def test_option_loglikelihood_scores_match_one_sequence_at_a_time(fixture, tmp_path):
    from omnitune.text.mc_eval import MCItem, mc_accuracy, option_scores, read_mc_items

    task = task_for(fixture)
    tok = task.tokenizer
    torch.manual_seed(0)
    model = task.build_model().eval()
    items = [MCItem("review: good film . positive ?", ["yes", "no"], 0),
             MCItem("review: bad plot . positive ?", ["yes", "no", "or"], 1)]
    scores = option_scores(model, tok, items, prompt_template="{question} {options}", batch_size=3)
    for item, per_option in zip(items, scores):
        prompt = tok.apply_chat_template([{"role": "user", "content": f"{item.question} " + "\n".join(item.lettered())}],
                                         tokenize=False, add_generation_prompt=True)
        for option, (total, count) in zip(item.lettered(), per_option):
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            full = tok(prompt + option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
            expected = sum(float(logp[t - 1, full[t]]) for t in range(len(p), len(full)))
            assert count == len(full) - len(p) == 2  # "A." (unknown to the tiny vocabulary) and the word
            assert total == pytest.approx(expected, abs=1e-4)
    acc = mc_accuracy(model, tok, items, prompt_template="{question} {options}")
    best = [max(range(len(s)), key=lambda j: s[j][0]) for s in scores]
    assert acc == {"accuracy": sum(b == it.answer for b, it in zip(best, items)) / 2,
                   "accuracy_norm": acc["accuracy_norm"], "n": 2}
    path = write_jsonl(tmp_path / "mc.jsonl", [
        {"question": "Q1?", "options": "\nA. bank\nB. library", "answer": "B. library"},
        {"passage": "Tracy stayed.", "question": "Why?", "options": "A. x\nB. y\nC. z", "answer": "A. x"},
        {"question": "no gold", "options": "A. a\nB. b"}])
    read = read_mc_items(str(path))
    assert [(i.question, i.options, i.answer) for i in read] == [("Q1?", ["bank", "library"], 1),
                                                                ("Tracy stayed.\nWhy?", ["x", "y", "z"], 0)]


BENCH = {"data.max_samples": 240, "data.max_eval_samples": 48, "model.generation.eval_samples": 48,
         "train.threads": 1, "train.eval_batch_size": 16}


@pytest.mark.slow
def test_smollm2_commonsenseqa_chat_sft_benchmark(tmp_path):
    """Real SmolLM2-135M-Instruct + LoRA, CommonsenseQA as instructions, 30 steps on 240 questions:
    the fine-tuned model answers in the trained format ("B. bookstore") every time and its answer
    tokens are likelier. It does not answer better: in the measured run exact match fell from 0.19
    (zero-shot) to 0.10, option log-likelihood accuracy from 0.23 to 0.19 (README), so the figures
    are printed, not asserted."""
    from omnitune.core.api import _load_run
    from omnitune.core.adapters import peft as peft_lib
    from omnitune.text.mc_eval import mc_accuracy, read_mc_items

    result = train("text/smollm2-commonsenseqa-chat-sft", {**BENCH, "output.dir": str(tmp_path)})
    m = result.metrics
    assert m["test"]["perplexity"] < m["baseline_test"]["perplexity"]
    report = (result.run_dir / "report.md").read_text()
    assert "| prompt | reference | zero-shot | fine-tuned |" in report
    rows = [json.loads(x) for x in (result.run_dir / "generations_test.jsonl").read_text().splitlines()]
    formatted = {k: sum(bool(re.match(r"^[A-E]\. \S", r[k])) for r in rows) / len(rows)
                 for k in ("zero-shot", "fine-tuned")}
    assert formatted["fine-tuned"] >= 0.9 and formatted["fine-tuned"] > formatted["zero-shot"]
    # Option log-likelihood on the run's own held-out test questions, base against fine-tuned.
    rec, task, tuned = _load_run(result.run_dir)
    held = {c[-2]["content"] for c in task.build_datasets().test.conversations}
    items = [it for it in read_mc_items(rec.data.source) if any(it.question in u for u in held)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = mc_accuracy(peft_lib.task_model(tuned), task.tokenizer, items)
        with tuned.disable_adapter():
            before = mc_accuracy(peft_lib.task_model(tuned), task.tokenizer, items)
    print(json.dumps({"generation": {"zero_shot": m["baseline_test"], "fine_tuned": m["test"]}, "formatted": formatted,
                      "option_loglik": {"zero_shot": before, "fine_tuned": after},
                      "seconds_per_step": m["timing"]["train_seconds"] / m["steps"]}))
    assert after["n"] == before["n"] > 30


def test_malformed_multiple_choice_rows_are_skipped_and_listed(tmp_path):
    from omnitune.text.mc_eval import read_mc_items

    path = write_jsonl(tmp_path / "mc.jsonl", [
        {"question": "ok?", "options": ".\nA. yes\nB. no", "answer": "A. yes"},
        {"question": "Which? A. x B. y", "options": "\nC. z\nD. w", "answer": "C. z"},
        {"question": "bad answer", "options": "A. a\nB. b", "answer": "E. e"}])
    skipped: list[int] = []
    items = read_mc_items(str(path), skipped)
    assert [(i.options, i.answer) for i in items] == [(["yes", "no"], 0)] and skipped == [1, 2]
