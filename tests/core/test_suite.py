"""Benchmark suites: entries run in their own processes and land in a leaderboard."""

from __future__ import annotations

import csv

import pytest
import yaml

from omnitune.core.base.errors import RecipeError
from omnitune.core.studies.suite import load_suite, run_suite, validate_suite

from ..conftest import text_recipe, write_recipe


def test_suite_writes_leaderboard(tmp_path, tiny_bert, reviews_csv):
    recipe = write_recipe(tmp_path / "r.yaml", text_recipe(tiny_bert, reviews_csv, tmp_path,
                                                           data={"max_samples": 64}, train={"epochs": 1}))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "tiny", "defaults": {"train.save_checkpoints": False},
        "entries": [
            {"name": "full", "recipe": str(recipe)},
            {"name": "lora", "recipe": str(recipe),
             "overrides": {"finetune.peft": {"method": "lora", "r": 2}, "train.lr": 1e-2}},
            {"name": "not-landed", "recipe": str(recipe), "overrides": {"task": "no-such-task"}},
        ]}))
    md = run_suite(suite, out_dir=tmp_path / "bench")
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "bench" / "leaderboard.csv"))}
    assert set(rows) == {"full", "lora", "not-landed"}
    for name in ("full", "lora"):
        assert rows[name]["error"] == "" and 0 <= float(rows[name]["accuracy"]) <= 1
        assert float(rows[name]["samples_per_s"]) > 0 and float(rows[name]["peak_rss_mb"]) > 50
    assert float(rows["lora"]["trainable_share"]) < float(rows["full"]["trainable_share"]) == 1.0
    assert "skipped" in rows["not-landed"]["error"]
    assert "| lora |" in md.read_text() and (tmp_path / "bench" / "leaderboard.png").is_file()


def test_suite_errors_name_the_entry(tmp_path, tiny_bert, reviews_csv):
    recipe = write_recipe(tmp_path / "r.yaml", text_recipe(tiny_bert, reviews_csv, tmp_path))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "bad", "entries": [
        {"name": "typo", "recipe": str(recipe), "overrides": {"train.lrr": 1}}]}))
    with pytest.raises(RecipeError, match="typo.*train.lrr"):
        run_suite(suite, out_dir=tmp_path / "bench")


@pytest.mark.parametrize("name", ["offline", "hub"])
def test_shipped_suites_validate(name):
    from pathlib import Path

    suite = load_suite(Path(__file__).parents[2] / "bench" / f"{name}.yaml")
    status = validate_suite(suite)
    assert not [s for s in status.values() if s.startswith("error")], status
