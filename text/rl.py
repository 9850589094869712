"""Rule-based rewards for RLOO (``finetune.reward: pkg.module:function``).

A reward function is called as ``fn(prompts=, completions=, chosen=, rejected=)`` with lists of
equal length (the batch's rows repeated once per sample) and returns one float per completion.

>>> gold_option_reward(prompts=["q"] * 3, completions=["B. bank", "A. mall", "bank"],
...                    chosen=["B. bank"] * 3, rejected=["A. mall"] * 3)
[1.0, 0.0, 1.0]
"""

from __future__ import annotations

import re

from .preference_data import option_letter

_WORD = re.compile(r"[^a-z0-9]+")


def _norm(text: str) -> str:
    return " ".join(_WORD.sub(" ", str(text).lower()).split())


def _option_text(option: str) -> str:
    return _norm(re.sub(r"^\s*[A-Z][.)]\s*", "", str(option)))


def gold_option_reward(prompts, completions, chosen, **_) -> list[float]:
    """1.0 when the completion answers with the gold option, else 0.0. For a lettered option
    ("B. bank") the completion's leading letter decides when it has one; otherwise (or for a
    free-text gold answer, as in NQ-open) the gold text must occur in the completion."""
    out = []
    for completion, gold in zip(completions, chosen):
        gold_letter, said = option_letter(gold), option_letter(completion.strip())
        if gold_letter and said:
            out.append(1.0 if said == gold_letter else 0.0)
            continue
        target = _option_text(gold)
        out.append(1.0 if target and f" {target} " in f" {_norm(completion)} " else 0.0)
    return out
