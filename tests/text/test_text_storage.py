"""data.storage for text classification: disk (chunked cleaning into memory-mapped Arrow, token ids
read row by row) gives the same rows, report, batches, losses and weights as memory."""

from __future__ import annotations

import json
import pickle

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from omnitune.core.api import train
from omnitune.core.base.data import choose_storage
from omnitune.core.base.errors import DataError
from omnitune.core.base.recipe import RegularizationConfig
from omnitune.core.base.task import DataReport
from omnitune.text import data as tdata
from omnitune.text.classification import TextClassificationTask, TextDataConfig, TextModelConfig

from ..conftest import make_reviews, text_recipe, write_recipe


@pytest.fixture
def small_chunks(monkeypatch, tmp_path):
    """Chunks of 7 rows, so every cleaning step meets rows in several chunks; a fresh cache."""
    monkeypatch.setattr(tdata, "CHUNK_ROWS", 7)
    monkeypatch.setenv("OMNITUNE_CACHE", str(tmp_path / "cache"))


def _dirty_rows() -> list[dict]:
    rows = make_reviews(100)
    # Rows 100-104 are unusable; 105-107 repeat rows 0, 1, 1 (three exact duplicates, far from
    # their first copies, in another chunk); 108 repeats row 2's text with the other label.
    rows += [{"text": "", "label": "pos"}, {"text": None, "label": "neg"}, {"text": "good film", "label": None},
             {"text": "meh film", "label": "plot"}, {"text": "meh plot", "label": "plot"}]
    rows += [rows[0], rows[1], rows[1], {"text": rows[2]["text"], "label": "neg" if rows[2]["label"] == "pos" else "pos"}]
    return rows


def _task(source, storage, tiny_bert, **data) -> TextClassificationTask:
    return TextClassificationTask(
        model=TextModelConfig(name=str(tiny_bert), max_length=data.pop("max_length", 32)),
        data=TextDataConfig(source=str(source), labels=["neg", "pos"], storage=storage, **data),
        regularization=RegularizationConfig(), seed=0)


def _without_storage_note(report: dict) -> dict:
    return {**report, "notes": [n for n in report["notes"] if not n.startswith("data.storage")]}


def test_disk_run_matches_memory(tmp_path, tiny_bert, small_chunks):
    path = tmp_path / "dirty.jsonl"  # JSON keeps "" (empty) apart from null (missing)
    pd.DataFrame(_dirty_rows()).to_json(path, orient="records", lines=True)
    val = tmp_path / "val.csv"  # two rows also in train: dropped from validation as overlap
    pd.DataFrame(make_reviews(100)[:2] + make_reviews(30, seed=7)).to_csv(val, index=False)
    runs = {}
    for storage in ("memory", "disk"):
        recipe = text_recipe(tiny_bert, path, tmp_path / "runs",
                             data={"validation_source": str(val), "unknown_labels": "drop", "storage": storage},
                             train={"epochs": 2, "batch_size": 8, "log_every": 1},
                             output={"dir": str(tmp_path / "runs"), "run_name": storage})
        runs[storage] = train(write_recipe(tmp_path / f"{storage}.yaml", recipe)).run_dir
    reports = {s: json.loads((d / "data_report.json").read_text()) for s, d in runs.items()}
    # Worked out from the rows above: 109 read, 5 unusable + 4 duplicates (the flipped-label copy
    # of row 2 is no exact duplicate: it stays), 32 validation rows of which 2 are in train.
    memory = reports["memory"]
    assert memory["rows_read"] == {"train": 109, "validation": 32}
    assert memory["dropped"]["train"] == {"missing text (text)": 1, "empty text (text)": 1, "missing label": 1,
                                          "label not in declared set": 2, "exact duplicate": 3}
    assert memory["dropped"]["validation"] == {"also in train (same text)": 2}
    assert _without_storage_note(reports["disk"]) == _without_storage_note(memory)
    assert "data.storage disk: disk" in reports["disk"]["notes"]

    losses = {s: [e["loss"] for e in map(json.loads, (d / "events.jsonl").read_text().splitlines())
                  if e["event"] == "train"] for s, d in runs.items()}
    assert len(losses["memory"]) > 5 and losses["disk"] == losses["memory"]
    weights = {s: load_file(str(d / "model" / "model.safetensors")) for s, d in runs.items()}
    assert all(torch.equal(weights["disk"][k], v) for k, v in weights["memory"].items())
    metrics = {s: json.loads((d / "metrics.json").read_text()) for s, d in runs.items()}
    assert metrics["disk"]["test"] == metrics["memory"]["test"]


@pytest.mark.parametrize("data", [
    {"text_pair_column": "other"},
    {"long_text": "chunks", "chunk_stride": 2, "max_length": 8},
    {"problem_type": "multi_label", "labels": None},
])
def test_disk_items_match_memory(tmp_path, tiny_bert, small_chunks, data):
    rows = _dirty_rows()
    for i, r in enumerate(rows):
        r["other"] = rows[(i * 7) % len(rows)]["text"] or "film"
    path = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    extra = {"unknown_labels": "drop", **data}
    if data.get("problem_type") == "multi_label":
        extra.pop("labels")
        bundles = {s: TextClassificationTask(
            model=TextModelConfig(name=str(tiny_bert)),
            data=TextDataConfig(source=str(path), storage=s, problem_type="multi_label", unknown_labels="drop"),
            regularization=RegularizationConfig(), seed=0).build_datasets() for s in ("memory", "disk")}
    else:
        bundles = {s: _task(path, s, tiny_bert, **dict(extra)).build_datasets() for s in ("memory", "disk")}
    memory, disk = bundles["memory"], bundles["disk"]
    assert isinstance(disk.train, tdata.DiskTextDataset) and not isinstance(memory.train, tdata.DiskTextDataset)
    for split in ("train", "validation", "test"):
        m, d = getattr(memory, split), getattr(disk, split)
        assert len(m) == len(d) > 0
        assert [m[i] for i in range(len(m))] == [d[i] for i in range(len(d))]
        assert [m.texts[i] for i in range(len(m))] == [d.texts[i] for i in range(len(d))]
    assert list(memory.train_lengths) == list(disk.train_lengths)
    assert _without_storage_note(disk.report.to_dict()) == _without_storage_note(memory.report.to_dict())


def test_unknown_label_is_the_same_one_line_error(tmp_path, tiny_bert, small_chunks):
    rows = make_reviews(40)
    rows[3]["label"], rows[30]["label"] = "plot", "meh"  # the second one is in a later chunk
    path = tmp_path / "bad.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    messages = {}
    for storage in ("memory", "disk"):
        with pytest.raises(DataError) as err:
            _task(path, storage, tiny_bert).build_datasets()
        messages[storage] = str(err.value)
    assert messages["disk"] == messages["memory"]
    assert "\n" not in messages["disk"] and str(path) in messages["disk"]
    assert "2 rows" in messages["disk"] and "['meh', 'plot']" in messages["disk"] and "[3, 30]" in messages["disk"]
    assert not list((tmp_path / "cache" / "tables").glob("*.arrow"))  # nothing half-made is kept


def test_disk_files_are_reused_and_a_half_written_one_is_not(tmp_path, tiny_bert, reviews_csv, small_chunks):
    first = _task(reviews_csv, "disk", tiny_bert).build_datasets()
    files = sorted((tmp_path / "cache").rglob("*.arrow"))
    assert len(files) == 4  # the cleaned table, and token ids of train, validation, test
    mtimes = [f.stat().st_mtime_ns for f in files]
    second = _task(reviews_csv, "disk", tiny_bert).build_datasets()
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # mapped again, not rewritten
    assert second.report.to_dict() == first.report.to_dict()
    # A run killed while writing leaves a table without its counts file: it is made again.
    table = next(f for f in files if f.parent.name == "tables")
    table.with_suffix(".json").unlink()
    table.write_bytes(b"half")
    third = _task(reviews_csv, "disk", tiny_bert).build_datasets()
    assert third.report.to_dict() == first.report.to_dict()
    assert [third.train[i] for i in range(len(third.train))] == [first.train[i] for i in range(len(first.train))]


def test_disk_dataset_pickles_for_loader_workers(tmp_path, tiny_bert, reviews_csv, small_chunks):
    bundle = _task(reviews_csv, "disk", tiny_bert).build_datasets()
    copy = pickle.loads(pickle.dumps(bundle.train))
    assert copy._table is None and copy[5] == bundle.train[5]


def test_auto_storage_is_decided_by_size_and_noted(tmp_path, tiny_bert, reviews_csv):
    report = DataReport(source="x")
    assert choose_storage("auto", 300 * 2**20, report) == "disk"
    assert choose_storage("auto", 1000, report, threshold=10) == "disk"
    assert choose_storage("auto", 10, report, threshold=1000) == "memory"
    assert report.notes[0] == "data.storage auto: disk (source 300.0 MiB, threshold 256 MiB)"
    bundle = _task(reviews_csv, "auto", tiny_bert).build_datasets()  # a small file: memory
    assert "data.storage auto: memory" in bundle.report.notes[0]
    assert not isinstance(bundle.train, tdata.DiskTextDataset)
