"""Data-size curves (core/studies/curve.py): nested stratified subsets; a tiny curve end to end."""

from __future__ import annotations

import doctest
import json
from collections import Counter

import pandas as pd
import pytest

from omnitune.core.studies import curve as curve_mod
from omnitune.core.api import curve
from omnitune.core.studies.curve import crossover, nested_subsets, parse_variants, stratified_order
from omnitune.core.base.errors import DataError, OmnituneError

from ..conftest import text_recipe, write_recipe


def test_subsets_are_nested_and_stratified():
    labels = ["a"] * 600 + ["b"] * 300 + ["c"] * 100  # 60 / 30 / 10 %
    sizes = [10, 30, 100, 300, 1000]
    subsets = nested_subsets(labels, len(labels), sizes, seed=0)
    for small, large in zip(sizes, sizes[1:]):
        assert set(subsets[small]) <= set(subsets[large])  # nested
    for n in sizes:
        assert len(subsets[n]) == n and len(set(subsets[n])) == n
        counts = Counter(labels[i] for i in subsets[n])
        for cls, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
            assert abs(counts[cls] - share * n) <= 1.0  # within one row of the class's share
    # Seeded: the same seed gives the same order, another seed another one.
    assert stratified_order(labels, 1000, 0).tolist() == stratified_order(labels, 1000, 0).tolist()
    assert stratified_order(labels, 1000, 1).tolist() != stratified_order(labels, 1000, 0).tolist()
    with pytest.raises(DataError, match="2000"):
        nested_subsets(labels, len(labels), [2000], seed=0)


def test_crossover_and_variants():
    assert crossover([100, 1000], [0.8, 0.85], [0.6, 0.95]) == pytest.approx(10 ** (2 + 2 / 3))
    assert crossover([100, 1000, 3000], [0.8, 0.85, 0.9], [0.5, 0.6, 0.7]) is None
    assert crossover([100, 300, 1000], [0.58, 0.71, 0.81], [0.58, 0.59, 0.62]) is None  # a tie is no crossing
    assert crossover([100, 300, 1000], [0.6, 0.7, 0.8], [0.5, 0.7, 0.9]) == pytest.approx(10 ** 2.5)
    assert parse_variants("scratch,lora") == ["pretrained", "scratch", "lora"]
    with pytest.raises(OmnituneError, match="unknown"):
        parse_variants("scratch,magic")
    assert doctest.testmod(curve_mod).failed == 0


def test_written_subsets_nested_per_repeat_with_fixed_test(tmp_path, tiny_bert, reviews_csv):
    from omnitune.core.api import build_task
    from omnitune.core.base.recipe import validate_recipe

    rec = validate_recipe(text_recipe(tiny_bert, reviews_csv, tmp_path))
    data = curve_mod.write_curve_data(rec, build_task(rec), [40, 80], 2, tmp_path / "d")
    small, large = (pd.read_csv(tmp_path / "d" / "r0" / f"n{n}.csv") for n in (40, 80))
    assert set(small["text"]) <= set(large["text"])  # nested on disk
    assert (small["label"] == "pos").sum() == 20  # stratified: the reviews are half pos
    assert set(pd.read_csv(tmp_path / "d" / "r1" / "n40.csv")["text"]) != set(small["text"])  # repeats differ
    test = set(pd.read_csv(data["test"])["text"])
    assert not test & set(large["text"]) and not test & set(pd.read_csv(data["validation"])["text"])


def test_summary_mean_and_sample_std():
    rows = [{"variant": "pretrained", "size": 10, "repeat": r, "accuracy": a} for r, a in enumerate((0.6, 0.7, 0.8))]
    s = curve_mod.summarise(rows, "accuracy")["pretrained"][10]
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(0.1) and s["n"] == 3


def test_tiny_curve_runs_end_to_end(tmp_path, tiny_bert, reviews_csv):
    raw = text_recipe(tiny_bert, reviews_csv, tmp_path, train={"epochs": 2, "save_checkpoints": False})
    out = curve(write_recipe(tmp_path / "r.yaml", raw), sizes="40,80", repeats=1, compare="scratch",
                out_dir=tmp_path / "curve")
    rows = pd.read_csv(tmp_path / "curve" / "curve.csv")
    assert len(rows) == 2 * 2  # variants x sizes x repeats
    test = pd.read_csv(tmp_path / "curve" / "data" / "test.csv")
    for r in out["rows"]:
        report = json.loads((tmp_path / "curve" / "runs" / f"{r['variant']}-n{r['size']}-r{r['repeat']}"
                             / "data_report.json").read_text())
        assert report["rows_kept"]["train"] == r["size"] == r["train_rows"]  # trained on exactly the subset
        assert report["rows_kept"]["test"] == len(test)  # and every point is scored on the same test rows
    summary = json.loads((tmp_path / "curve" / "curve.json").read_text())["summary"]
    acc = rows[(rows.variant == "scratch") & (rows["size"] == 80)]["accuracy"]
    assert summary["scratch"]["80"]["mean"] == pytest.approx(acc.iloc[0])
    assert (tmp_path / "curve" / "curve.png").is_file() and "| pretrained |" in (tmp_path / "curve" / "curve.md").read_text()
