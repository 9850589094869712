"""data.storage beyond text classification: causal-lm reads its table through the shared pipeline
(text/pipeline.py), so disk (chunked cleaning into memory-mapped Arrow, token ids read row by row)
gives the same rows, report, batches, losses and weights as memory; the tasks whose rows are not
table columns refuse the field with one line instead of ignoring it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from omnitune.core.api import build_task, train
from omnitune.core.base.errors import RecipeError
from omnitune.core.base.recipe import validate_recipe
from omnitune.text import data as tdata
from omnitune.text.testing import make_qa_rows, make_tiny_llama

from ..conftest import write_recipe


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def small_chunks(monkeypatch, tmp_path):
    """Chunks of 7 rows, so every cleaning step meets rows in several chunks; a fresh cache."""
    monkeypatch.setattr(tdata, "CHUNK_ROWS", 7)
    monkeypatch.setenv("OMNITUNE_CACHE", str(tmp_path / "cache"))


def _dirty_rows() -> list[dict]:
    rows = make_qa_rows(60)
    # 60-62 unusable (empty review, missing review, missing answer); 63-65 repeat rows 0, 1, 1.
    rows += [{"review": "", "answer": "yes"}, {"review": None, "answer": "no"}, {"review": "good film", "answer": None}]
    return rows + [rows[0], rows[1], rows[1]]


def _recipe(model: Path, data: Path, val: Path, out: Path, storage: str) -> dict:
    return {"name": "tiny-lm", "task": "causal-lm", "seed": 0,
            "model": {"name": str(model), "max_length": 32},
            "data": {"source": str(data), "validation_source": str(val), "storage": storage,
                     "prompt_template": "review: {review} answer:", "response_template": " {answer}"},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "precision": "fp32", "log_every": 1},
            "output": {"dir": str(out), "run_name": storage}}


def _without_storage_note(report: dict) -> dict:
    return {**report, "notes": [n for n in report["notes"] if not n.startswith("data.storage")]}


def test_causal_lm_disk_matches_memory(tmp_path, tiny_llama, small_chunks):
    data = tmp_path / "dirty.jsonl"  # JSON keeps "" (empty) apart from null (missing)
    pd.DataFrame(_dirty_rows()).to_json(data, orient="records", lines=True)
    val = tmp_path / "val.jsonl"  # two rows also in train: dropped from validation as overlap
    pd.DataFrame(make_qa_rows(60)[:2] + make_qa_rows(20, seed=7)).to_json(val, orient="records", lines=True)
    bundles = {s: build_task(validate_recipe(_recipe(tiny_llama, data, val, tmp_path / "runs", s))).build_datasets()
               for s in ("memory", "disk")}
    memory, disk = bundles["memory"], bundles["disk"]
    assert isinstance(disk.train, tdata.DiskTextDataset) and not isinstance(memory.train, tdata.DiskTextDataset)
    report = memory.report.to_dict()
    # Worked out from the rows above: 66 read, 3 unusable, 3 exact duplicates; 2 validation rows in train.
    assert report["rows_read"]["train"] == 66
    assert report["dropped"]["train"] == {"missing text (review)": 1, "empty text (review)": 1,
                                          "missing text (answer)": 1, "exact duplicate": 3}
    assert report["dropped"]["validation"] == {"also in train (same row)": 2}
    assert _without_storage_note(disk.report.to_dict()) == _without_storage_note(report)
    for split in ("train", "validation", "test"):
        m, d = getattr(memory, split), getattr(disk, split)
        assert len(m) == len(d) > 0
        assert [m[i] for i in range(len(m))] == [d[i] for i in range(len(d))]
        assert [m.texts[i] for i in range(len(m))] == [d.texts[i] for i in range(len(d))]
    assert list(memory.train_lengths) == list(disk.train_lengths)

    runs = {s: train(write_recipe(tmp_path / f"{s}.yaml", _recipe(tiny_llama, data, val, tmp_path / "runs", s))).run_dir
            for s in ("memory", "disk")}
    losses = {s: [e["loss"] for e in map(json.loads, (d / "events.jsonl").read_text().splitlines())
                  if e["event"] == "train"] for s, d in runs.items()}
    assert len(losses["memory"]) > 5 and losses["disk"] == losses["memory"]
    weights = {s: load_file(str(d / "model" / "model.safetensors")) for s, d in runs.items()}
    assert all(torch.equal(weights["disk"][k], v) for k, v in weights["memory"].items())
    metrics = {s: json.loads((d / "metrics.json").read_text()) for s, d in runs.items()}
    assert metrics["disk"]["test"] == metrics["memory"]["test"]


@pytest.mark.parametrize("task", ["chat", "token-classification", "question-answering", "preference",
                                  "reward-model", "seq2seq"])
def test_storage_is_refused_where_rows_are_not_table_columns(task):
    raw = {"name": "x", "task": task, "model": {"name": "m"}, "data": {"source": "rows.csv", "storage": "disk"}}
    with pytest.raises(RecipeError) as err:
        validate_recipe(raw)
    message = str(err.value)
    assert "data.storage" in message and "\n" not in message
