"""Long inputs: the helpers on hand-made values, the data report's truncation counts and warning, and
text classification on a generated corpus whose label is decided by the LAST word of each text, so
keeping only the start (truncate) cannot learn it while head_tail and chunks can."""

from __future__ import annotations

import json
import random

from types import SimpleNamespace

import pytest
import torch

from omnitune.core.api import build_task, predict, train
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.base.task import DataReport
from omnitune.core.loop.tracking import read_events
from omnitune.text import long_text
from omnitune.text.testing import FILLER, NEGATIVE, POSITIVE, make_tokenizer_and_model, write_csv


def test_windows_head_tail_and_length_stats_by_hand():
    assert long_text.windows(3, size=4, stride=2) == [(0, 3)]
    assert long_text.windows(10, size=4, stride=1) == [(0, 4), (3, 7), (6, 10)]
    assert long_text.windows(9, size=4, stride=0) == [(0, 4), (4, 8), (8, 9)]
    with pytest.raises(ValueError):
        long_text.windows(9, size=4, stride=4)
    assert long_text.head_tail([1, 2, 3], budget=5, head=2) == [1, 2, 3]
    assert long_text.head_tail(list(range(10)), budget=5, head=2) == [0, 1, 7, 8, 9]
    assert long_text.head_tail(list(range(10)), budget=5, head=0) == [5, 6, 7, 8, 9]
    # median of 1..20 is 10.5; p95 by linear interpolation: 1 + 0.95 * 19 = 19.05
    assert long_text.length_stats(list(range(1, 21))) == {"median": 10.5, "p95": 19.1, "max": 20}


def test_note_lengths_counts_and_warns_over_five_percent(capsys):
    report = DataReport(source="x")
    share = long_text.note_lengths(report, "train", [10] * 95 + [30] * 5, limit=20)
    assert share == 0.05 and len(report.notes) == 1  # exactly 5%: noted, no warning
    assert report.notes[0].startswith("train: 5 of 100 inputs (5.0%) longer than max_length 20 tokens")
    assert "median 10, p95 11, max 30" in report.notes[0]  # p95 of 95 tens and 5 thirties: 10 + 0.05 * 20
    assert capsys.readouterr().err == ""
    long_text.note_lengths(report, "test", [10] * 94 + [30] * 6, limit=20)
    assert "warning: test: 6.0% of inputs" in capsys.readouterr().err
    assert report.notes[-1].startswith("warning: test: 6.0%")
    long_text.note_lengths(report, "val", [30] * 10, limit=20, cut=False)  # windows: nothing is lost
    assert capsys.readouterr().err == ""


def test_special_layout_of_a_bert_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(make_tokenizer_and_model(tmp_path / "m"))
    assert long_text.special_layout(tok) == ([tok.cls_token_id], [tok.sep_token_id])
    assert long_text.window_budget(tok, 12) == 10


def end_decides(n: int, words: int = 30, seed: int = 0) -> list[dict]:
    """Texts of ``words`` random filler words and a last word that alone decides the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        body = [rng.choice(FILLER) for _ in range(words)]
        rows.append({"text": " ".join(body + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]), "label": label})
    return rows


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    return folder, make_tokenizer_and_model(folder / "bert"), write_csv(folder / "long.csv", end_decides(200))


def _recipe(long_corpus, mode: str, **data) -> dict:
    folder, model, data_path = long_corpus
    return validate_recipe({
        "name": f"long-{mode}", "task": "text-classification", "seed": 0,
        # 12 tokens: [CLS] + 10 words + [SEP]; the texts have 31 words
        "model": {"name": str(model), "max_length": 12},
        "data": {"source": str(data_path), "labels": ["neg", "pos"], "long_text": mode, "val_size": 0.2,
                 "test_size": 0.2, **data},
        # 10 epochs of 120 texts at a high LR: measured, head_tail and chunks reach 0.9-1.0 (4 epochs at
        # 3e-3 left head_tail at 0.6), truncate stays near chance whatever the budget
        "train": {"epochs": 10, "batch_size": 16, "lr": 1e-2, "precision": "fp32", "threads": 1},
        "regularization": {"dropout": 0.0},
        "output": {"dir": str(folder / "runs"), "run_name": mode},
    })


def test_report_counts_truncated_texts_per_split(long_corpus, capsys):
    bundle = build_task(_recipe(long_corpus, "truncate")).build_datasets()
    notes = bundle.report.notes
    for split, n in (("train", 120), ("validation", 40), ("test", 40)):
        assert any(x.startswith(f"{split}: {n} of {n} texts (100.0%) longer than max_length 12 tokens, truncated")
                   for x in notes), notes
    assert "warning: train: 100.0% of texts" in capsys.readouterr().err
    assert all(len(ids) == 12 for ids in bundle.train.encodings["input_ids"])
    chunks = build_task(_recipe(long_corpus, "chunks", chunk_stride=2)).build_datasets()
    # 31 words in windows of 10 sharing 2: starts 0, 8, 16, 24 -> 4 windows of [CLS] ... [SEP]
    assert [len(w) for w in chunks.train.encodings["input_ids"][0]] == [12, 12, 12, 9]
    assert not any(n.startswith("warning") for n in chunks.report.notes)


class WindowLogits(torch.nn.Module):
    """Logits of each window = (first token id, last token id): the pooling is checked by hand."""

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        last = input_ids.gather(1, (attention_mask.sum(1, keepdim=True) - 1))
        return SimpleNamespace(logits=torch.cat([input_ids[:, :1], last], 1).float())


@pytest.mark.parametrize("pooling,expected", [("mean", [[2.0, 6.0], [7.0, 8.0]]), ("max", [[3.0, 9.0], [7.0, 8.0]])])
def test_chunk_logits_pool_per_text(long_corpus, pooling, expected):
    task = build_task(_recipe(long_corpus, "chunks", chunk_pooling=pooling))
    samples = [{"input_ids": [[1, 5, 3], [3, 9]], "token_type_ids": [[0, 0, 0], [0, 0]], "labels": 1, "index": 0},
               {"input_ids": [[7, 8]], "token_type_ids": [[0, 0]], "labels": 0, "index": 1}]
    batch = task.collate(samples)
    assert batch["chunk_of"].tolist() == [0, 0, 1] and batch["labels"].tolist() == [1, 0]
    # windows give (1, 3), (3, 9), (7, 8): text 0 pools the first two, text 1 is its one window
    assert task._logits(WindowLogits(), batch).tolist() == expected


@pytest.mark.parametrize("mode,data", [("truncate", {}), ("head_tail", {"head_share": 0.2}),
                                       ("chunks", {"chunk_stride": 2, "chunk_pooling": "max"})])
def test_only_what_sees_the_end_learns_a_label_decided_at_the_end(long_corpus, mode, data):
    result = train(_recipe(long_corpus, mode, **data))
    accuracy = result.metrics["test"]["accuracy"]
    if mode == "truncate":
        assert accuracy < 0.75, accuracy  # chance is 0.5: the deciding word is never seen
    else:
        assert accuracy >= 0.9, accuracy
        text = " ".join(["the"] * 30 + ["superb"])
        [out] = predict(result.run_dir, [text])
        assert out["label"] == "pos", out
    saved = json.loads((result.run_dir / "data_report.json").read_text())
    assert any("longer than max_length 12" in n for n in saved["notes"])
    warned = [e["message"] for e in read_events(result.run_dir) if e["event"] == "data_warning"]
    if mode == "truncate":  # every split loses the deciding end: warned, and the warning is in the run's events
        assert any(m.startswith("warning: train: 100.0% of texts") for m in warned), warned
    elif mode == "chunks":  # windows lose nothing
        assert warned == []
