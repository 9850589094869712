"""Tiny text fixtures, built from configs and generated data: nothing is downloaded.

They back the text tasks' registered fixtures (``omnitune.fixtures``: the contract tests and the
tiny run of every shipped recipe) and the test suite's fixtures; production code never imports them.
Labels and answers hinge on one sentiment word, so a tiny model learns them in a few steps.
"""

from __future__ import annotations

import random
from pathlib import Path

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "dull", "poor", "boring", "weak"]
FILLER = ["the", "film", "movie", "was", "plot", "actors", "very", "quite", "a", "story"]
LLAMA_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def make_tokenizer_and_model(folder: Path, num_layers: int = 2, hidden: int = 32) -> Path:
    """A word-level tokenizer over the fixture vocabulary and a random tiny BERT, saved as a HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, "|||"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return save_tiny_bert(folder, tok, len(vocab), num_layers, hidden)


def save_tiny_bert(folder: Path, tok, vocab_size: int, num_layers: int = 2, hidden: int = 32) -> Path:
    """A ``tokenizers`` tokenizer whose first ids are [PAD] [UNK] [CLS] [SEP] [MASK], given BERT's
    [CLS] ... [SEP] template, and a random tiny BERT over its vocabulary, saved as a HF folder."""
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                            special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=num_layers,
                        num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=64)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # the same tiny model every session: learning tests must not depend on luck
    BertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def make_reviews(n: int, seed: int = 0) -> list[dict]:
    """Short texts whose label is decided by a sentiment word: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, rng.randint(2, 8)) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def make_tiny_llama(folder: Path) -> Path:
    """A word-level tokenizer and a random 2-layer Llama (tied embeddings, like SmolLM2)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = [*LLAMA_SPECIALS, *POSITIVE, *NEGATIVE, *FILLER, "review:", "answer:", "yes", "no"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                         # With the usual std 0.02 the tied (frozen under LoRA) embeddings bound every
                         # logit below ~0.7, so no adapter could make an answer likely; pretrained
                         # embeddings are far larger than that.
                         initializer_range=0.3)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def make_qa_rows(n: int = 200, seed: int = 0) -> list[dict]:
    """review -> yes/no (positive?): the response is decided by one word of the prompt."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if pos else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "answer": "yes" if pos else "no"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def build_once(path: Path, build) -> Path:
    """Build a fixture into ``path`` unless an earlier call in the same folder already did."""
    return path if path.exists() else build(path)


def tiny_classification_recipe(folder: Path) -> dict:
    """text-classification: a tiny BERT and 240 generated reviews (neg/pos)."""
    folder = Path(folder)
    model = build_once(folder / "tiny-bert", make_tokenizer_and_model)
    data = build_once(folder / "reviews.csv", lambda p: write_csv(p, make_reviews(240)))
    return {
        "name": "tiny-text-classification", "task": "text-classification", "seed": 0,
        "model": {"name": str(model), "max_length": 32},
        # Every data field a shipped recipe may set for its own data is given here, so swapping
        # this section into it leaves none of the original's columns behind.
        "data": {"source": str(data), "validation_source": None, "test_source": None, "text_column": "text",
                 "text_pair_column": None, "label_column": "label", "labels": ["neg", "pos"],
                 "problem_type": "single_label"},
        "train": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "precision": "fp32"},
        "regularization": {"dropout": 0.0},
        "output": {"dir": str(folder / "runs")},
    }


def tiny_causal_lm_recipe(folder: Path) -> dict:
    """causal-lm: a tiny Llama (tied embeddings) and 200 generated review -> yes/no rows."""
    folder = Path(folder)
    model = build_once(folder / "tiny-llama", make_tiny_llama)
    data = build_once(folder / "qa.csv", lambda p: write_csv(p, make_qa_rows(200)))
    return {
        "name": "tiny-causal-lm", "task": "causal-lm", "seed": 0,
        "model": {"name": str(model), "max_length": 32, "max_new_tokens": 2},
        "data": {"source": str(data), "validation_source": None, "test_source": None,
                 "prompt_template": "review: {review} answer:", "response_template": " {answer}"},
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-2, "precision": "fp32"},
        "output": {"dir": str(folder / "runs")},
    }


class TextClassificationFixture:
    """text-classification's fixture (entry point in ``omnitune.fixtures``)."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_classification_recipe(folder)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return ["the film was good", "a very dull plot"]


class CausalLMFixture:
    """causal-lm's fixture (entry point in ``omnitune.fixtures``)."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_causal_lm_recipe(folder)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return ["the film was good"]
