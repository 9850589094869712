"""Shared fixtures: a tiny BERT with its own tokenizer, built from a config, and tiny text data.

Nothing here downloads anything; the asset cache and tokenised-text cache go to a temp folder
unless OMNITUNE_CACHE is already set (CI keeps the real assets cached between runs that way).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("OMNITUNE_CACHE", str(Path.home() / ".cache" / "omnitune"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models gain nothing from a second thread, and OpenMP threads spin badly when the two
# cores are shared with other work.
torch.set_num_threads(1)

# The builders live in the package's testing modules, beside each task's registered fixture
# (omnitune.fixtures), which uses them too; production code never imports them.
from omnitune.text.testing import (FILLER, NEGATIVE, POSITIVE, make_reviews,  # noqa: E402,F401
                                   make_tokenizer_and_model)


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
