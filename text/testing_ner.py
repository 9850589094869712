"""Tiny token-classification fixtures, built from configs and generated sentences: nothing downloaded.

The tokenizer is a word-piece one over a small vocabulary, so some words split into sub-tokens
("parisville" -> "paris", "##ville"; "bobby" -> "bob", "##by") and label alignment is exercised.
Tags hang on the words themselves (a name is a person wherever it stands), so a tiny model learns
them in a few steps; some sentences are longer than the tiny recipe's window.
"""

from __future__ import annotations

import random
from pathlib import Path

from .testing import build_once, save_tiny_bert

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PERSONS = ["alice", "bob", "carol", "dave", "bobby"]  # "bobby" -> bob ##by
PLACES = ["paris", "london", "rome", "parisville", "new york"]  # "new york": two words, B-LOC I-LOC
ORGS = ["acme", "globex corp"]
FILLER = ["the", "today", "visited", "met", "works", "at", "in", "and", "said", "then", "went", "to", "a", "team"]
PIECES = ["##ville", "##by", "##s"]
TAGS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def make_wordpiece_bert(folder: Path, num_layers: int = 2, hidden: int = 32) -> Path:
    """A word-piece tokenizer (BERT-style, lower case) over the fixture vocabulary and a random tiny BERT."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    words = sorted({w for phrase in PERSONS + PLACES + ORGS for w in phrase.split()} - {"bobby", "parisville"})
    vocab = [*SPECIALS, *words, *FILLER, *PIECES, ".", ","]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return save_tiny_bert(folder, tok, len(vocab), num_layers, hidden)


def _tagged(phrase: str, kind: str) -> list[tuple[str, str]]:
    words = phrase.split()
    return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]


def make_ner_sentences(n: int, seed: int = 0, long_every: int = 5) -> list[list[tuple[str, str]]]:
    """Sentences of (word, tag): "alice visited paris today", "bob works at acme", ...; every
    ``long_every``-th one is three clauses long (over 20 words, longer than the tiny window)."""
    rng = random.Random(seed)

    def clause() -> list[tuple[str, str]]:
        out = _tagged(rng.choice(PERSONS), "PER")
        if rng.random() < 0.5:
            out += [("visited", "O")] + _tagged(rng.choice(PLACES), "LOC")
        else:
            out += [("works", "O"), ("at", "O")] + _tagged(rng.choice(ORGS), "ORG")
        out += [(w, "O") for w in rng.sample(["today", "then", "in", "the", "team"], rng.randint(0, 2))]
        return out

    sentences = []
    for i in range(n):
        parts = [clause() for _ in range(3 if long_every and i % long_every == 0 else 1)]
        sentence = parts[0]
        for p in parts[1:]:
            sentence = sentence + [("and", "O")] + p
        sentences.append(sentence + [(".", "O")])
    return sentences


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in s) + "\n" for s in sentences))
    return path


def tiny_ner_recipe(folder: Path) -> dict:
    """token-classification: a tiny word-piece BERT and 160 generated tagged sentences (CoNLL file)."""
    folder = Path(folder)
    model = build_once(folder / "tiny-bert-wordpiece", make_wordpiece_bert)
    data = build_once(folder / "ner.conll", lambda p: write_conll(p, make_ner_sentences(160)))
    return {
        "name": "tiny-token-classification", "task": "token-classification", "seed": 0,
        # 16 tokens per window: the three-clause sentences (over 20 words) are read in windows.
        "model": {"name": str(model), "max_length": 16},
        # Every data field a shipped recipe may set is given, so swapping this section in leaves none behind.
        "data": {"source": str(data), "validation_source": None, "test_source": None, "tokens_column": "tokens",
                 "label_column": "tags", "labels": TAGS, "tag_map": {}, "stride": 4, "label_subtokens": "first",
                 "conll_token_column": 0, "conll_tag_column": -1, "tag_scheme": None, "unknown_labels": "error"},
        "train": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "precision": "fp32"},
        "regularization": {"dropout": 0.0},
        "output": {"dir": str(folder / "runs")},
    }


def tiny_ner_inputs() -> list[str]:
    return ["Alice visited Paris today.", "bob works at globex corp, then went to parisville"]


class TokenClassificationFixture:
    """token-classification's fixture (entry point in ``omnitune.fixtures``)."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_ner_recipe(folder)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return tiny_ner_inputs()
