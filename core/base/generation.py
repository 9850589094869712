"""Text generation settings and helpers shared by every generative task (chat, seq2seq, ASR-like).

A generative task puts ``generation: GenerationConfig`` in its ``model`` section, so a recipe sets
beams, length and sampling in one place, and evaluation, ``predict`` and ``omnitune chat`` decode
the same way. Evaluation generates for a fixed, seeded subset of the evaluation split
(``eval_samples``) to bound its cost; the loss is still computed on the whole split.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import Field

from ..base.recipe import Section


class GenerationConfig(Section):
    max_new_tokens: int = Field(default=64, gt=0)
    """Most tokens generated per sample (the prompt not counted)."""
    num_beams: int = Field(default=1, gt=0)
    """Beam-search width; 1 is greedy (or sampling, with do_sample)."""
    do_sample: bool = False
    """Sample from the distribution (temperature, top_p, top_k apply) instead of greedy or beam search."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling only: divides the logits; below 1 sharpens, above 1 flattens."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Sampling only: nucleus sampling keeps the smallest token set whose probabilities sum to top_p (1:
    all)."""
    top_k: int = Field(default=50, ge=0)
    """Sampling only: keep the k most likely tokens (0: no limit)."""
    length_penalty: float = 1.0
    """Beam search only: exponent on the length in the beam score; above 1 favours longer outputs."""
    repetition_penalty: float = Field(default=1.0, gt=0)
    """Penalises tokens already generated (CTRL's penalty, as in transformers; 1: none, 1.2 is a usual
    start)."""
    no_repeat_ngram_size: int = Field(default=0, ge=0)
    """No n-gram of this size occurs twice in an output (0: off)."""
    eval_samples: int | None = Field(default=64, gt=0)
    """Evaluation generates for this many samples of a fixed (seeded) subset of the split; None: all."""

    def kwargs(self, tokenizer: Any = None) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``; sampling knobs only when sampling, and the pad
        token set from the tokenizer (its EOS when it has no pad token)."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                               "do_sample": self.do_sample, "repetition_penalty": self.repetition_penalty}
        if self.num_beams > 1:
            out["length_penalty"] = self.length_penalty
        if self.no_repeat_ngram_size:
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        if tokenizer is not None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            if pad is not None:
                out["pad_token_id"] = pad
        return out


def fixed_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """Sorted indices of a fixed subset of ``n`` samples (all of them when ``limit`` is None or
    >= n); the same for a given seed in every run and every evaluation of a run."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def side_by_side(rows: list[dict[str, str]], columns: list[str], width: int = 160) -> str:
    """A markdown table of example generations (e.g. input, reference, zero-shot, fine-tuned),
    each cell cut to ``width`` characters and kept on one line."""
    def cell(text: Any) -> str:
        s = " ".join(str(text).split()).replace("|", "\\|")
        return s if len(s) <= width else s[: width - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
