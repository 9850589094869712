"""WER and CER (computed by jiwer), after one declared text normaliser. ``wer`` and ``cer`` below are
the speech domain's metrics, registered by name through the ``omnitune.metrics`` entry-point group
(pyproject.toml), so the core registry computes and lists them without knowing speech.

The same normaliser is applied to references and hypotheses, for the zero-shot baseline and the
fine-tuned model alike, and its name goes into the report. Metrics are percentages (12.5 = 12.5 %).

>>> round(word_error_rate(["the cat sat"], ["the cat sat down"]), 2)
33.33
"""

from __future__ import annotations

from typing import Callable, Literal

import jiwer

from omnitune.core.base.metrics import compute, define_metric


@define_metric("wer", "min", "jiwer",
               "corpus word error rate in percent, (S + D + I) / reference words (jiwer.wer); texts already normalised")
def wer(predictions, references):
    return 100.0 * jiwer.wer(list(references), list(predictions))


@define_metric("cer", "min", "jiwer", "corpus character error rate in percent (jiwer.cer)")
def cer(predictions, references):
    return 100.0 * jiwer.cer(list(references), list(predictions))

NormalizerName = Literal["whisper_english", "whisper_basic", "lowercase", "none"]

NORMALIZER_DESCRIPTIONS = {
    "whisper_english": "Whisper's English text normaliser (transformers EnglishTextNormalizer: lower case, "
                       "punctuation and bracketed text removed, numbers written as digits, contractions expanded)",
    "whisper_basic": "Whisper's basic text normaliser (lower case, punctuation and bracketed text removed)",
    "lowercase": "lower case, whitespace collapsed",
    "none": "no normalisation (exact text)",
}


def get_normalizer(name: str, spelling_map: dict[str, str] | None = None) -> Callable[[str], str]:
    """The text normaliser called ``name``. ``spelling_map`` is the British->American table that
    Hugging Face Whisper checkpoints ship as normalizer.json; without it (the offline CTranslate2
    asset has none) spellings are left alone, which is neutral for American-English data."""
    if name == "whisper_english":
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        norm = EnglishTextNormalizer(spelling_map or {})
        return lambda s: norm(s).strip()
    if name == "whisper_basic":
        from transformers.models.whisper.english_normalizer import BasicTextNormalizer

        basic = BasicTextNormalizer()
        return lambda s: " ".join(basic(s).split())
    if name == "lowercase":
        return lambda s: " ".join(s.lower().split())
    if name == "none":
        return lambda s: " ".join(s.split())
    raise ValueError(f"unknown normaliser {name!r} (known: {', '.join(NORMALIZER_DESCRIPTIONS)})")


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER in percent: (S + D + I) / reference words, summed over all utterances (the
    registry's ``wer``; note the argument order, references first, as jiwer's)."""
    return compute("wer", hypotheses, references)


def char_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus CER in percent (the registry's ``cer``)."""
    return compute("cer", hypotheses, references)


def utterance_errors(reference: str, hypothesis: str) -> dict[str, int]:
    """Substitutions, deletions, insertions and reference length of one utterance."""
    out = jiwer.process_words(reference, hypothesis)
    return {"substitutions": out.substitutions, "deletions": out.deletions, "insertions": out.insertions,
            "errors": out.substitutions + out.deletions + out.insertions,
            "words": out.substitutions + out.deletions + out.hits}


def worst_utterances(names: list[str], references: list[str], hypotheses: list[str], top: int = 10) -> list[dict]:
    """The utterances with the most word errors (ties: higher per-utterance WER first)."""
    rows = []
    for name, ref, hyp in zip(names, references, hypotheses):
        e = utterance_errors(ref, hyp)
        rows.append({"name": name, "reference": ref, "hypothesis": hyp, **e,
                     "wer": 100.0 * e["errors"] / max(1, e["words"])})
    rows.sort(key=lambda r: (-r["errors"], -r["wer"], r["name"]))
    return [r for r in rows[:top] if r["errors"] > 0]


def markdown_table(rows: list[dict]) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|") or "(empty)"

    lines = ["| utterance | reference | hypothesis | errors (S/D/I) | WER % |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {cell(r['name'])} | {cell(r['reference'])} | {cell(r['hypothesis'])} | "
                     f"{r['errors']} ({r['substitutions']}/{r['deletions']}/{r['insertions']}) | {r['wer']:.1f} |")
    return "\n".join(lines)
