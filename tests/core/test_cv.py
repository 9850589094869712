"""Cross-validation: folds are disjoint, stratified and cover the data; a CV run reports mean and std."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from omnitune.core.api import build_task, cross_validate
from omnitune.core.studies.cv import stratified_folds, summarise, write_folds
from omnitune.core.base.recipe import load_recipe

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


class _ListingTask:
    """A task whose data are files: it lists them as manifest rows (the cv_rows protocol)."""

    def __init__(self, frame, stratify):
        self.frame, self.stratify = frame, stratify

    def cv_rows(self):
        return self.frame, self.stratify


def test_a_task_listing_its_files_gets_manifest_folds(tmp_path, tiny_bert, reviews_csv):
    rec = load_recipe(write_recipe(tmp_path / "r.yaml", text_recipe(tiny_bert, reviews_csv, tmp_path,
                                                                    data={"labels": None})))
    frame = pd.DataFrame({"file": [f"/data/{i}.bin" for i in range(12)] + ["/data/0.bin"],
                          "kind": ["x"] * 8 + ["y"] * 4 + ["x"]})
    folds = write_folds(rec, 4, tmp_path / "cv", task=_ListingTask(frame, "kind"))
    assert folds.manifests and folds.stratify == "kind" and folds.labels == ["x", "y"]
    tests = [pd.read_csv(d / "test.csv") for d in folds.dirs]
    assert sorted(pd.concat(tests)["file"]) == sorted(set(frame["file"]))  # the duplicate row is gone
    assert all(Counter(t["kind"]) == {"x": 2, "y": 1} for t in tests)
    assert folds.overrides(1) == {"data.source": str(folds.dirs[1] / "train.csv"), "data.validation_source": None,
                                  "data.test_source": str(folds.dirs[1] / "test.csv"), "data.labels": ["x", "y"]}
    # Unstratified rows (no class label): no label list is imposed on the folds.
    plain = write_folds(rec, 3, tmp_path / "cv2", task=_ListingTask(frame, None))
    assert plain.stratify is None and plain.labels is None and "data.labels" not in plain.overrides(0)
    # The tabular path is unchanged: fold folders of split tables.
    table = write_folds(rec, 3, tmp_path / "cv3", build_task(rec))
    assert not table.manifests and table.overrides(0)["data.source"] == str(table.dirs[0])
