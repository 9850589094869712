"""Cross-validation: folds are disjoint, stratified and cover the data; a CV run reports mean and std."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from omnitune.core.api import cross_validate
from omnitune.core.cv import stratified_folds, summarise

from ..conftest import text_recipe, write_recipe


def test_folds_are_disjoint_stratified_and_cover():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 7
    folds = stratified_folds(labels, len(labels), 5, seed=0)
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # cover, and no row twice (disjoint)
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for fold in folds:
        counts = Counter(labels[i] for i in fold)
        assert counts["a"] == 10 and counts["b"] == 6 and counts["c"] in (1, 2)
    assert [f.tolist() for f in stratified_folds(labels, len(labels), 5, seed=0)] == [f.tolist() for f in folds]
    assert [f.tolist() for f in stratified_folds(labels, len(labels), 5, seed=1)] != [f.tolist() for f in folds]


def test_summary_is_mean_and_sample_std():
    out = summarise([{"accuracy": 0.8}, {"accuracy": 0.9}, {"accuracy": 1.0}])
    assert out["accuracy"]["mean"] == pytest.approx(0.9)
    assert out["accuracy"]["std"] == pytest.approx(0.1)


def test_cv_runs_every_fold_on_held_out_rows(tmp_path, tiny_bert, reviews_csv):
    recipe = text_recipe(tiny_bert, reviews_csv, tmp_path, train={"epochs": 1, "save_checkpoints": False})
    out = cross_validate(write_recipe(tmp_path / "r.yaml", recipe), folds=3, out_dir=tmp_path / "cv")
    data = pd.read_csv(reviews_csv).drop_duplicates()
    tests = [pd.read_csv(tmp_path / "cv" / "data" / f"fold_{i}" / "test.csv") for i in range(3)]
    held_out = pd.concat(tests)
    assert len(held_out) == len(data) and not held_out.duplicated().any()
    for i, test in enumerate(tests):
        train = pd.read_csv(tmp_path / "cv" / "data" / f"fold_{i}" / "train.csv")
        assert not set(map(tuple, train.values)) & set(map(tuple, test.values))
        assert abs((test["label"] == "pos").mean() - 0.5) < 0.05
        # The run's test split is exactly the held-out fold.
        report = json.loads((tmp_path / "cv" / "runs" / f"fold-{i}" / "data_report.json").read_text())
        assert report["rows_kept"]["test"] == len(test)
    assert len(out["folds"]) == 3
    accs = [f["accuracy"] for f in out["folds"]]
    assert out["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert "± " in (tmp_path / "cv" / "cv_report.md").read_text()
