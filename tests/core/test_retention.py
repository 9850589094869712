"""Retention (eval.retention): the general-domain set scored before and after fine-tuning."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from omnitune.core.api import build_task, evaluate, train
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.evaluation.retention import compare, pool, probe_accuracy, retention_md
from omnitune.core.loop.trainer import evaluate_model

from ..conftest import FILLER, text_recipe


def test_probe_accuracy_separable_and_random():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 100)
    separable = rng.normal(size=(200, 4)) + labels[:, None] * 10.0
    assert probe_accuracy(separable, labels, seed=0)["probe_accuracy"] == 1.0
    noise = rng.normal(size=(200, 4))
    assert 0.3 < probe_accuracy(noise, labels, seed=0)["probe_accuracy"] < 0.7
    out = probe_accuracy(separable, labels, seed=0)
    assert out["probe_fit_samples"] == 100 and out["probe_test_samples"] == 100


def test_pool_and_compare_by_hand():
    assert pool(torch.ones(2, 3, 4) * torch.arange(3.0)[None, :, None]).tolist() == [[1.0] * 4] * 2
    assert pool(torch.ones(2, 5, 3, 3)).shape == (2, 5)
    ret = compare("gen.csv", {"mode": "metrics", "samples": 10, "metrics": {"loss": 2.0, "perplexity": 7.389}},
                  {"mode": "metrics", "samples": 10, "metrics": {"loss": 2.5, "perplexity": 12.18}})
    assert ret["change"]["loss"] == pytest.approx(0.5)
    assert ret["change"]["perplexity"] == pytest.approx(4.791)
    assert "| loss | 2.0000 | 2.5000 | +0.5000 |" in retention_md(ret)


def _topic_rows(n: int, seed: int = 1) -> list[dict]:
    """A different labelled ability than the sentiment task: does the text mention 'plot'?"""
    rng = random.Random(seed)
    rows = []
    words = [w for w in FILLER if w != "plot"]
    for i in range(n):
        picked = rng.sample(words, 4) + (["plot"] if i % 2 == 0 else [])
        rng.shuffle(picked)
        rows.append({"text": " ".join(picked), "label": "plot" if i % 2 == 0 else "other"})
    return rows


def test_metrics_mode_matches_independent_evaluations(tmp_path, tiny_bert, reviews_csv):
    """before == the seeded starting model evaluated by hand; after == `omnitune eval --data`."""
    general = tmp_path / "general.csv"
    from ..conftest import make_reviews

    pd.DataFrame(make_reviews(60, seed=7)).to_csv(general, index=False)
    raw = text_recipe(tiny_bert, reviews_csv, tmp_path, train={"epochs": 1},
                      eval={"retention": str(general), "retention_mode": "metrics"})
    result = train(validate_recipe(raw))
    ret = json.loads((result.run_dir / "metrics.json").read_text())["retention"]
    assert ret["mode"] == "metrics" and ret["samples"] == 60
    after = evaluate(result.run_dir, data=str(general))["metrics"]
    assert ret["after"]["loss"] == pytest.approx(after["loss"], rel=1e-5)
    assert ret["after"]["accuracy"] == pytest.approx(after["accuracy"])
    # The starting model: same seed, same build as train() -> evaluated on the same set.
    from omnitune.core.api import seed_everything

    rec = validate_recipe(raw)
    task = build_task(rec)
    task.build_datasets()
    seed_everything(rec.seed)
    model = task.build_model()
    ds, _ = task.load_eval_dataset(str(general), task.label_names)
    start, _, _ = evaluate_model(task, model, ds, 32, torch.device("cpu"))
    assert ret["before"]["loss"] == pytest.approx(start["loss"], rel=1e-5)
    assert ret["change"]["loss"] == pytest.approx(after["loss"] - start["loss"], rel=1e-4, abs=1e-6)
    assert "## Retention" in (result.run_dir / "report.md").read_text()
    assert (result.run_dir / "retention_before.json").is_file()


def test_linear_probe_reads_its_own_labels(tmp_path, tiny_bert, reviews_csv):
    probe = tmp_path / "topic.csv"
    pd.DataFrame(_topic_rows(80)).to_csv(probe, index=False)
    raw = text_recipe(tiny_bert, reviews_csv, tmp_path, train={"epochs": 1},
                      eval={"retention": str(probe)})  # auto -> linear_probe (the task has labels)
    result = train(validate_recipe(raw))
    ret = result.metrics["retention"]
    assert ret["mode"] == "linear_probe" and ret["samples"] == 80
    # Independent check of the "after" probe: the saved model's pooled features by hand.
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from omnitune.core.base.data import stratified_split

    model = AutoModelForSequenceClassification.from_pretrained(result.run_dir / "model").eval()
    tok = AutoTokenizer.from_pretrained(result.run_dir / "model")
    frame = pd.read_csv(probe)
    with torch.no_grad():
        enc = tok(frame["text"].tolist(), padding=True, truncation=True, max_length=32, return_tensors="pt")
        feats = model.bert(**enc).pooler_output.numpy()
    labels = np.array([["other", "plot"].index(v) for v in frame["label"]])
    fit, held = stratified_split(labels, [0.5], 0)
    scaler = StandardScaler().fit(feats[fit])
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(feats[fit]), labels[fit])
    expected = float((clf.predict(scaler.transform(feats[held])) == labels[held]).mean())
    assert ret["after"]["probe_accuracy"] == pytest.approx(expected)
    assert 0.0 <= ret["before"]["probe_accuracy"] <= 1.0


def test_lm_perplexity_on_a_plain_corpus(tmp_path):
    """An LM's retention: perplexity on a general corpus with its own column (eval.retention_data)."""
    import math

    from omnitune.text.testing import tiny_causal_lm_recipe

    raw = tiny_causal_lm_recipe(tmp_path)
    corpus = tmp_path / "corpus.csv"
    pd.DataFrame({"text": [" ".join(random.Random(i).sample(FILLER, 6)) for i in range(24)]}).to_csv(corpus,
                                                                                                   index=False)
    raw["eval"] = {"retention": str(corpus), "retention_data": {"prompt_template": "", "response_template": "{text}"}}
    raw["train"].update({"max_steps": 4, "save_checkpoints": False})
    result = train(validate_recipe(raw))
    ret = result.metrics["retention"]
    assert ret["mode"] == "metrics" and ret["samples"] == 24  # auto: no label set -> the task's metrics
    for when in ("before", "after"):
        assert ret[when]["perplexity"] == pytest.approx(math.exp(ret[when]["token_nll"]), rel=1e-4)
    assert ret["change"]["perplexity"] == pytest.approx(ret["after"]["perplexity"] - ret["before"]["perplexity"])
