"""Tiny preference fixtures built from configs and generated data: nothing is downloaded.

A pair asks for the sentiment of a generated review: prompt "review: <words> answer:", chosen
" yes" for a positive review (" no" for a negative one), rejected the other. The model is the tiny
word-level Llama of text/testing.py, so the answer is one token and a few steps learn it.
"""

from __future__ import annotations

import random
from pathlib import Path

from .testing import FILLER, NEGATIVE, POSITIVE, build_once, make_tiny_llama, write_csv


def make_pairs(n: int = 200, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if pos else NEGATIVE)]
        rng.shuffle(words)
        yes, no = ("yes", "no") if pos else ("no", "yes")
        rows.append({"prompt": f"review: {' '.join(words)} answer:", "chosen": yes, "rejected": no})
    return rows


def says_chosen(prompts, completions, chosen, **_) -> list[float]:
    """A rule reward for the tiny model: 1.0 when the completion's first word is the chosen answer."""
    return [1.0 if (c.split() or [""])[0] == g else 0.0 for c, g in zip(completions, chosen)]


def _data_section(data: Path) -> dict:
    # Every data field a shipped recipe may set for its own data, so swapping this section into it
    # leaves none of the original's behind.
    return {"source": str(data), "validation_source": None, "test_source": None, "builders": [],
            "prompt_column": "prompt", "chosen_column": "chosen", "rejected_column": "rejected",
            "template": "auto", "system_prompt": None, "prompt_template": "{prompt}",
            "response_template": " {response}", "add_eos": True}


def tiny_preference_recipe(folder: Path) -> dict:
    """preference (DPO): the tiny Llama and 200 generated sentiment pairs."""
    folder = Path(folder)
    model = build_once(folder / "tiny-llama", make_tiny_llama)
    data = build_once(folder / "pairs.csv", lambda p: write_csv(p, make_pairs(200)))
    return {
        "name": "tiny-preference", "task": "preference", "seed": 0,
        "model": {"name": str(model), "max_length": 32,
                  "generation": {"max_new_tokens": 2, "do_sample": True, "temperature": 1.0, "top_k": 0}},
        "data": _data_section(data),
        "finetune": {"objective": "dpo", "beta": 0.5},
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-2, "precision": "fp32"},
        "output": {"dir": str(folder / "runs")},
    }


def tiny_reward_recipe(folder: Path) -> dict:
    """reward-model: a scalar head on the tiny Llama, on the same generated pairs."""
    folder = Path(folder)
    model = build_once(folder / "tiny-llama", make_tiny_llama)
    data = build_once(folder / "pairs.csv", lambda p: write_csv(p, make_pairs(200)))
    return {
        "name": "tiny-reward-model", "task": "reward-model", "seed": 0,
        "model": {"name": str(model), "max_length": 32},
        "data": _data_section(data),
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-2, "precision": "fp32"},
        "output": {"dir": str(folder / "runs")},
    }


class RewardModelFixture:
    """reward-model's fixture (entry point in ``omnitune.fixtures``): inputs are ``prompt ||| completion``."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_reward_recipe(folder)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return ["review: the film was good answer: ||| yes", "review: a dull plot answer: ||| yes"]


class PreferenceFixture:
    """preference's fixture (entry point in ``omnitune.fixtures``)."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_preference_recipe(folder)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return ["review: the film was good answer:"]
