"""Long inputs, for every text task: count what is cut, keep head and tail, or cut into windows.

A text longer than ``model.max_length`` tokens is never cut without a word: :func:`note_lengths`
puts the share of inputs over the limit and the token length distribution (median, p95, max) of
each split into the data report, and warns when more than :data:`WARN_SHARE` of a split is cut.

The helpers work on token id lists without special tokens; :func:`special_layout` finds what the
tokenizer adds around a single text (``[CLS] ... [SEP]`` for BERT, ``<s> ... </s>`` for RoBERTa),
so a window or a head+tail cut is wrapped exactly as the tokenizer wraps a whole text.

>>> windows(10, size=4, stride=2)
[(0, 4), (2, 6), (4, 8), (6, 10)]
>>> head_tail(list(range(10)), budget=4, head=1)
[0, 7, 8, 9]
>>> length_stats(list(range(1, 22)))
{'median': 11.0, 'p95': 20.0, 'max': 21}
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from omnitune.core.base.errors import RecipeError

# More than this share of a split cut by max_length prints a warning (the 5%).
WARN_SHARE = 0.05


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """Median, 95th percentile and maximum of token lengths (numpy's linear interpolation)."""
    if not len(lengths):
        return {"median": 0.0, "p95": 0.0, "max": 0}
    arr = np.asarray(lengths, dtype=float)
    return {"median": round(float(np.median(arr)), 1), "p95": round(float(np.percentile(arr, 95)), 1),
            "max": int(arr.max())}


def note_lengths(report, split: str, lengths: Sequence[int], limit: int, *, what: str = "inputs",
                 handling: str = "truncated to the first max_length tokens", cut: bool = True) -> float:
    """Note in ``report`` how many of a split's ``lengths`` (tokens, special tokens included) are
    over ``limit`` and what happened to them; returns that share. When ``cut`` (something is lost)
    and the share is over :data:`WARN_SHARE`, a warning is printed and noted too."""
    over = sum(1 for n in lengths if n > limit)
    share = over / max(1, len(lengths))
    s = length_stats(lengths)
    report.notes.append(
        f"{split}: {over} of {len(lengths)} {what} ({share:.1%}) longer than max_length {limit} tokens, "
        f"{handling}; length in tokens: median {s['median']:g}, p95 {s['p95']:g}, max {s['max']}")
    if cut and share > WARN_SHARE:
        message = (f"warning: {split}: {share:.1%} of {what} are longer than max_length {limit} tokens and "
                   f"lose their end (median {s['median']:g}, p95 {s['p95']:g} tokens); raise model.max_length "
                   f"or set data.long_text: head_tail or chunks")
        report.warn(message)
    return share


def windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` of at most ``size`` tokens covering ``0..n``, consecutive windows
    sharing ``stride`` tokens (the Hugging Face meaning of stride: the overlap). One span when
    ``n <= size``; the last window ends at ``n``."""
    if not 0 <= stride < size:
        raise ValueError(f"stride {stride} must be >= 0 and below the window size {size}")
    if n <= size:
        return [(0, n)]
    spans, start = [], 0
    while True:
        end = min(start + size, n)
        spans.append((start, end))
        if end == n:
            return spans
        start = end - stride


def head_tail(ids: Sequence[int], budget: int, head: int) -> list[int]:
    """The first ``head`` and the last ``budget - head`` of ``ids`` (all of them when they fit):
    the head+tail cut of Sun et al. 2019, "How to fine-tune BERT for text classification"."""
    ids = list(ids)
    if len(ids) <= budget:
        return ids
    head = max(0, min(head, budget))
    tail = budget - head
    return ids[:head] + (ids[len(ids) - tail:] if tail else [])


def special_layout(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text (e.g. ``[CLS]`` / ``[SEP]``)."""
    probe = "hello"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare):])
    raise RecipeError(f"{type(tokenizer).__name__}: cannot tell which special tokens wrap a text "
                      "(its template is not prefix + text + suffix); use data.long_text: truncate")


def window_budget(tokenizer, max_length: int, stride: int | None = None, field: str = "data.stride") -> int:
    """Tokens of text one window of ``max_length`` holds (its special tokens taken off); checks
    that ``stride`` leaves the windows room to advance."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise RecipeError(f"model.max_length: {max_length} leaves no room for text next to the special tokens")
    if stride is not None and stride >= budget:
        raise RecipeError(f"{field}: {stride} must be below the {budget} text tokens a window of "
                          f"model.max_length {max_length} holds")
    return budget
