"""Causal-LM pieces that the causal-lm, chat and preference tasks compose: the next-token loss on
labelled tokens, its perplexity metrics, the hardest-responses table, and generation from token-id
prompts. Plain functions with explicit arguments."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label value that cross entropy skips (prompt and padding tokens)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> dict[str, Any]:
    """The contract's forward result from a causal LM's logits: next-token NLL summed over the
    labelled tokens (labels IGNORE elsewhere), with per-sample sums for perplexity."""
    logits, target = logits[:, :-1], labels[:, 1:]  # token t predicts token t + 1
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE,
                          reduction="none", label_smoothing=label_smoothing)
    nll = nll.view(target.shape)
    counted = (target != IGNORE).sum(-1)
    # Summed over response tokens; the trainer divides by the tokens of the whole step, so every
    # token weighs the same whatever the batch it fell into. Per-sample sums feed perplexity.
    return {"loss_sum": nll.sum(), "num_items": counted.sum(),
            "outputs": {"nll_sum": nll.sum(-1).detach(), "tokens": counted}}


def perplexity_metrics(nll_sums: Sequence[float], token_counts: Sequence[int]) -> dict[str, float]:
    """Perplexity and mean token NLL over a split, from per-sequence NLL sums and token counts."""
    from omnitune.core.base.metrics import compute

    return {name: compute(name, list(nll_sums), list(token_counts)) for name in ("perplexity", "token_nll")}


def hardest_responses(texts: Sequence[str], nll_sums: Sequence[float], token_counts: Sequence[int]) -> list[str]:
    """The report block of the five responses with the highest mean token NLL (``texts[i]`` shown)."""
    per_sample = sorted(((p / max(1, r), i) for i, (p, r) in enumerate(zip(nll_sums, token_counts))),
                        reverse=True)[:5]
    if not per_sample:
        return []
    rows = ["| text | token NLL |", "|---|---|"]
    rows += [f"| {texts[i][:120].replace('|', chr(92) + '|').replace(chr(10), ' ')} | {v:.3f} |"
             for v, i in per_sample]
    return ["Hardest responses (highest mean token NLL):\n\n" + "\n".join(rows)]


@torch.no_grad()
def generate_replies(model: nn.Module, tokenizer, prompts: list[list[int]], **generate_kwargs) -> list[str]:
    """Replies to token-id prompts (left-padded into one batch), decoded without special tokens;
    the model is put in eval mode for the call and back afterwards."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **generate_kwargs)
    model.train(was_training)
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
