"""RLOO: sampling inside forward, a rule reward, the leave-one-out baseline and the KL penalty, on
the tiny Llama; and the objective through the core's loop with LoRA."""

from __future__ import annotations

import math

import pytest
import torch

from omnitune.core.api import as_recipe, build_peft_model, build_task, seed_everything, train
from omnitune.core.base.errors import RecipeError
from omnitune.core.base.recipe import validate_recipe
from omnitune.text.rl import gold_option_reward
from omnitune.text.testing_preference import tiny_preference_recipe

RULE = "omnitune.text.testing_preference:says_chosen"


def _rloo_raw(folder, **finetune):
    raw = tiny_preference_recipe(folder)
    raw["finetune"] = {"objective": "rloo", "k": 8, "reward": RULE, "kl_coef": 0.0, **finetune}
    raw["model"]["generation"] = {"max_new_tokens": 1, "do_sample": True, "top_k": 0}
    return raw


def _expected_reward(task, model, batch) -> float:
    """The exact mean reward of one-token answers under ``says_chosen``: the policy's probability
    of the chosen answer's token after each prompt, averaged over prompts."""
    tok = task.tokenizer
    with torch.no_grad():
        logits = model(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"]).logits[:, -1]
    gold = torch.tensor(tok.convert_tokens_to_ids(batch["chosen"]))
    return float(logits.softmax(-1).gather(1, gold[:, None]).mean())


def test_rloo_steps_move_the_mean_reward_under_a_rule(tmp_path):
    torch.manual_seed(0)
    rec = validate_recipe(_rloo_raw(tmp_path))
    task = build_task(rec)
    bundle = task.build_datasets()
    batch = task.collate([bundle.train[i] for i in range(16)])
    seed_everything(0)
    model = task.build_model().train()
    before = _expected_reward(task, model, batch)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rewards = []
    for _ in range(4):
        out = task.forward(model, batch, train=True)
        assert out["num_items"] == 16 * 8  # k samples per prompt, each an item of the loss
        rewards.append(float(out["outputs"]["reward"].mean()))
        opt.zero_grad()
        (out["loss_sum"] / out["num_items"]).backward()
        opt.step()
    after = _expected_reward(task, model, batch)
    assert after > before + 0.1, (before, after, rewards)


def test_rloo_advantages_sum_to_zero_per_prompt_and_kl_starts_at_zero(tmp_path):
    rec = validate_recipe(_rloo_raw(tmp_path, kl_coef=0.5))
    task = build_task(rec)
    bundle = task.build_datasets()
    batch = task.collate([bundle.train[i] for i in range(4)])
    seed_everything(0)
    model = task.build_model().eval()  # no dropout: the policy equals its frozen copy
    out = task.forward(model, batch, train=True)
    adv = out["outputs"]["advantages"].view(4, 8)
    torch.testing.assert_close(adv.sum(-1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["outputs"]["kl"], torch.zeros(32), atol=1e-5, rtol=0)


def test_rloo_with_lora_runs_in_the_core_loop(tmp_path):
    raw = _rloo_raw(tmp_path / "fx", k=4, kl_coef=0.05)
    raw["finetune"]["peft"] = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
    rec = as_recipe(validate_recipe(raw), {"train.max_steps": 3, "train.batch_size": 8, "train.eval_batch_size": 16,
                                           "data.max_eval_samples": 16, "output.dir": str(tmp_path / "runs"),
                                           "output.run_name": "rloo", "train.lr": 5e-3})
    m = train(rec).metrics
    assert m["steps"] == 3 and m["selected_by"] == "mean_reward"
    assert math.isfinite(m["test"]["mean_reward"]) and 0.0 <= m["test"]["mean_reward"] <= 1.0
    assert m["test"]["loss"] == pytest.approx(-m["test"]["mean_reward"])


def test_rloo_needs_sampling(tmp_path):
    raw = _rloo_raw(tmp_path)
    raw["model"]["generation"]["do_sample"] = False
    with pytest.raises(RecipeError, match="do_sample"):
        build_task(validate_recipe(raw))


def test_gold_option_rule():
    assert gold_option_reward(prompts=["q"] * 5, completions=["B. bank", "A) mall", "bank it is", "C", "the bank"],
                              chosen=["B. bank"] * 5) == [1.0, 0.0, 1.0, 0.0, 1.0]
    # free-text gold answers (NQ-open): the answer must occur in the completion, word for word
    assert gold_option_reward(prompts=["q"] * 2, completions=["It is Albuquerque, NM.", "Santa Fe"],
                              chosen=["albuquerque"] * 2) == [1.0, 0.0]


def test_rloo_scores_samples_with_a_reward_model_run(tmp_path):
    from omnitune.core.api import _load_run
    from omnitune.core.adapters.peft import task_model
    from omnitune.text.testing_preference import tiny_reward_recipe

    rm = train(as_recipe(validate_recipe(tiny_reward_recipe(tmp_path / "fx")),
                         {"train.max_steps": 2, "output.dir": str(tmp_path / "runs"), "output.run_name": "rm"}))
    raw = _rloo_raw(tmp_path / "fx", k=2, reward=str(rm.run_dir))
    task = build_task(validate_recipe(raw))
    bundle = task.build_datasets()
    batch = task.collate([bundle.train[i] for i in range(3)])
    seed_everything(0)
    out = task.forward(task.build_model(), batch, train=True)
    rewards = out["outputs"]["reward"]
    # The same scores as the reward model gives the sampled answers when asked directly.
    _, rm_task, rm_model = _load_run(rm.run_dir)
    completions = task._last_completions
    expected = rm_task.score(task_model(rm_model), [p for p in batch["prompts"] for _ in range(2)], completions)
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-5)
    assert len(set(rewards.tolist())) > 1  # real scores, not a 0/1 rule
