"""Tiny question-answering fixtures, built from configs and generated data: nothing is downloaded.

Each context is a run of filler words holding one sentiment word, the answer; a tiny BERT finds it
in a few steps.
Contexts run up to 30 words, longer than the tiny recipe's window, so some questions get two.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .testing import FILLER, NEGATIVE, POSITIVE, build_once, save_tiny_bert

QUESTION_WORDS = ["which", "word", "is", "positive", "negative", "?"]


def make_qa_tokenizer_and_model(folder: Path, num_layers: int = 2, hidden: int = 32) -> Path:
    """A word-level tokenizer (with offsets, as QA needs) over the fixture vocabulary and a random
    tiny BERT, saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, *QUESTION_WORDS, "|||"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return save_tiny_bert(folder, tok, len(vocab), num_layers, hidden)


def make_qa_rows(n: int, seed: int = 0, min_words: int = 6, max_words: int = 30) -> list[dict]:
    """SQuAD-layout rows: ``answers`` as {"text": [word], "answer_start": [char]}. Each context holds
    one sentiment word among filler words and the question names its polarity. (Two sentiment
    words, one asked for by the question, is too hard for a 2-layer 32-wide BERT in a few steps.)"""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind, words_of = ("positive", POSITIVE) if i % 2 == 0 else ("negative", NEGATIVE)
        words = [rng.choice(FILLER) for _ in range(rng.randint(min_words, max_words))]
        word = rng.choice(words_of)
        words.insert(rng.randint(0, len(words)), word)
        context = " ".join(words)
        start = (" " + context + " ").index(f" {word} ")  # the whole word (filler never holds it)
        rows.append({"id": f"q{i}", "context": context, "question": f"which word is {kind} ?",
                     "answers": {"text": [word], "answer_start": [start]}})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_qa_recipe(folder: Path) -> dict:
    """question-answering: a tiny BERT and 240 generated questions, one per context."""
    folder = Path(folder)
    model = build_once(folder / "tiny-qa-bert", make_qa_tokenizer_and_model)
    data = build_once(folder / "qa.jsonl", lambda p: write_jsonl(p, make_qa_rows(240)))
    return {
        "name": "tiny-question-answering", "task": "question-answering", "seed": 0,
        # A window of 24 tokens (8 of question and specials) holds 16 context words: longer contexts
        # get a second window, so the stride path runs in every tiny run.
        "model": {"name": str(model), "max_length": 24, "doc_stride": 6, "max_answer_length": 4, "n_best": 5},
        # Every data field a shipped recipe may set is given here, so swapping this section into it
        # leaves none of the original's settings behind.
        "data": {"source": str(data), "validation_source": None, "test_source": None, "format": "squad",
                 "id_column": "id", "context_column": "context", "question_column": "question",
                 "answers_column": "answers", "answer_text_column": None, "answer_start_column": None,
                 "unanswerable": False},
        "train": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "precision": "fp32"},
        # Span scores do not change when a window's start (or end) logits all shift by one constant,
        # so the head's bias and the last LayerNorm's bias get a gradient that is zero but for
        # rounding; AdamW's default eps (1e-8) turns that rounding into steps of ~lr/10, which differ
        # with the summation order (2 x 4 accumulated against a batch of 8). A larger eps keeps those
        # dead parameters still (live ones, with gradients of 1e-3 and more, barely notice).
        "optim": {"eps": 1e-5},
        "regularization": {"dropout": 0.0},
        "output": {"dir": str(folder / "runs")},
    }


def tiny_qa_inputs() -> list[str]:
    """Raw inputs for predict on the tiny model: both formats."""
    return ['{"question": "which word is positive ?", "context": "the film was good and the actors quite fun"}',
            "which word is negative ? ||| a very boring story with the actors"]


class QuestionAnsweringFixture:
    """question-answering's fixture (entry point in ``omnitune.fixtures``)."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_qa_recipe(folder)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return tiny_qa_inputs()
