"""Text classification variants: pairs, multi-label, regression, cleaning report, tokenisation cache."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest

from omnitune.core.api import predict, train
from omnitune.core.base.recipe import RegularizationConfig
from omnitune.text.classification import TextClassificationTask, TextDataConfig, TextModelConfig

from ..conftest import FILLER, NEGATIVE, POSITIVE, make_reviews, text_recipe, write_recipe


def _train(tmp_path, tiny_bert, data_path, **sections):
    recipe = text_recipe(tiny_bert, data_path, tmp_path, **sections)
    return train(write_recipe(tmp_path / "r.yaml", recipe))


def test_cleaning_report_counts_every_drop(tmp_path, tiny_bert):
    rows = make_reviews(60)
    rows += [{"text": "", "label": "pos"}, {"text": None, "label": "neg"}, {"text": "good film", "label": None},
             {"text": "meh film", "label": "plot"}, {"text": "meh plot", "label": "plot"}]
    rows += [rows[0], rows[1], rows[1]]  # three exact duplicates
    path = tmp_path / "dirty.jsonl"  # JSON keeps "" (empty) apart from null (missing); CSV cannot
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    task = TextClassificationTask(model=TextModelConfig(name=str(tiny_bert)),
                                  data=TextDataConfig(source=str(path), labels=["neg", "pos"], unknown_labels="drop"),
                                  regularization=RegularizationConfig(), seed=0)
    bundle = task.build_datasets()
    dropped = bundle.report.dropped["train"]
    assert dropped == {"missing text (text)": 1, "empty text (text)": 1, "missing label": 1,
                       "label not in declared set": 2, "exact duplicate": 3}
    assert bundle.report.rows_read["train"] == 68
    kept = len(bundle.train) + len(bundle.validation) + len(bundle.test)
    assert kept == 60 and bundle.report.examples["label not in declared set"] == ["'plot'"]


def test_tokenisation_is_cached(tmp_path, tiny_bert, reviews_csv, monkeypatch):
    monkeypatch.setenv("OMNITUNE_CACHE", str(tmp_path / "cache"))

    def build():
        task = TextClassificationTask(model=TextModelConfig(name=str(tiny_bert), max_length=17),
                                      data=TextDataConfig(source=str(reviews_csv), labels=["neg", "pos"]),
                                      regularization=RegularizationConfig(), seed=0)
        return task.build_datasets()

    first = build()
    files = list((tmp_path / "cache" / "tokenized").glob("*.json"))
    assert len(files) == 3  # train, validation, test
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    second = build()
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes  # read, not rewritten
    assert first.train.encodings == second.train.encodings


def test_sentence_pairs(tmp_path, tiny_bert):
    rng = random.Random(1)
    rows = []
    for i in range(240):
        same = i % 2 == 0
        a = rng.choice(POSITIVE)
        b = a if same else rng.choice(NEGATIVE)
        rows.append({"premise": f"the film was {a}", "hypothesis": f"a {b} story", "label": "same" if same else "diff"})
    path = tmp_path / "pairs.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    result = _train(tmp_path, tiny_bert, path, train={"epochs": 10},
                    data={"text_column": "premise", "text_pair_column": "hypothesis", "labels": ["diff", "same"]})
    assert result.metrics["test"]["accuracy"] >= 0.8
    out = predict(result.run_dir, ["the film was good ||| a good story"])
    assert out[0]["label"] in ("same", "diff") and set(out[0]["scores"]) == {"diff", "same"}


def test_multi_label(tmp_path, tiny_bert):
    rng = random.Random(2)
    rows = []
    for _ in range(240):
        pos, neg = rng.random() < 0.5, rng.random() < 0.5
        words = rng.sample(FILLER, 3) + ([rng.choice(POSITIVE)] if pos else []) + ([rng.choice(NEGATIVE)] if neg else [])
        rows.append({"text": " ".join(words), "label": "|".join(x for x, on in (("praise", pos), ("critique", neg)) if on)})
    path = tmp_path / "ml.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    result = _train(tmp_path, tiny_bert, path, train={"epochs": 10},
                    data={"problem_type": "multi_label", "labels": ["critique", "praise"]})
    assert result.metrics["selected_by"] == "f1_micro"
    assert result.metrics["test"]["f1_micro"] >= 0.8, result.metrics["test"]


def test_regression(tmp_path, tiny_bert):
    rng = random.Random(3)
    rows = []
    for _ in range(240):
        n_pos = rng.randint(0, 3)
        words = rng.sample(FILLER, 3) + rng.sample(POSITIVE, n_pos)
        rows.append({"text": " ".join(words), "label": float(n_pos)})
    path = tmp_path / "reg.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    result = _train(tmp_path, tiny_bert, path, train={"epochs": 20},
                    data={"problem_type": "regression", "labels": None})
    test = result.metrics["test"]
    assert result.metrics["selected_by"] == "mse" and test["mse"] < 0.6 * 1.25  # label variance is 1.25: well below a constant guess
    json.loads((result.run_dir / "metrics.json").read_text())
