"""Shared fixtures: a tiny BERT with its own tokenizer, built from a config, and tiny text data.

Nothing here downloads anything; the asset cache and tokenised-text cache go to a temp folder
unless OMNITUNE_CACHE is already set (CI keeps the real assets cached between runs that way).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("OMNITUNE_CACHE", str(Path.home() / ".cache" / "omnitune"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models gain nothing from a second thread, and OpenMP threads spin badly when the two
# cores are shared with other work.
torch.set_num_threads(1)

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "dull", "poor", "boring", "weak"]
FILLER = ["the", "film", "movie", "was", "plot", "actors", "very", "quite", "a", "story"]


def make_tokenizer_and_model(folder: Path, num_layers: int = 2, hidden: int = 32) -> Path:
    """A word-level tokenizer over the fixture vocabulary and a random tiny BERT, saved as a HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, "|||"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                            special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=num_layers,
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


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tokenizer_and_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory) -> Path:
    import pandas as pd

    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    pd.DataFrame(make_reviews(240)).to_csv(path, index=False)
    return path


def text_recipe(tiny_bert: Path, data_path: Path, run_dir: Path, **sections) -> dict:
    """A raw recipe mapping for the tiny model; sections merge over the defaults."""
    recipe = {
        "name": "tiny-text", "task": "text-classification", "seed": 0,
        "model": {"name": str(tiny_bert), "max_length": 32},
        "data": {"source": str(data_path), "labels": ["neg", "pos"]},
        "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "precision": "fp32", "log_every": 2},
        "regularization": {"dropout": 0.0},
        "output": {"dir": str(run_dir), "run_name": "run"},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path
