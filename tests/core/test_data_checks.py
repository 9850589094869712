"""Data checks every domain runs through core/base/data.py: train/evaluation overlap is counted and
dropped from the evaluation split; a classification set needs two classes; one hub: parser and
one split-name table."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from omnitune.core.api import build_task
from omnitune.core.base.data import HubRef, canonical_split, canonical_splits, drop_overlap, parse_hub
from omnitune.core.base.errors import DataError
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.base.task import DataReport
from omnitune.speech.testing import tone
from omnitune.text.testing import make_reviews
from omnitune.vision.testing import make_idx_folder, make_image_folder, write_idx

from ..fixtures import tiny_recipe


def _task(task_name, tmp_path, **data):
    raw = tiny_recipe(task_name, tmp_path / "fixtures")
    raw["data"].update(data)
    raw["output"] = {"dir": str(tmp_path / "runs")}
    return build_task(validate_recipe(raw))


# ----------------------------------------------------------------------------- shared pieces
def test_hub_references_and_split_names():
    assert parse_hub("hub:glue/sst2") == HubRef("glue/sst2", None)
    assert parse_hub("hub:librispeech_asr/clean:train.100[:2000]") == \
        HubRef("librispeech_asr/clean", "train.100[:2000]")
    assert HubRef("owner/name/config").candidates() == [("owner/name", "config")]
    assert HubRef("rotten_tomatoes").candidates() == [("rotten_tomatoes", None)]
    with pytest.raises(DataError, match="hub:NAME"):
        parse_hub("hub:")
    assert [canonical_split(s) for s in ("dev", "valid", "val", "Validation", "test", "train.100")] == \
        ["validation", "validation", "validation", "validation", "test", "train.100"]
    assert canonical_splits({"validation": 1, "dev": 2, "train": 3}) == {"train": 3, "validation": 1}


def test_drop_overlap_counts_and_drops_evaluation_rows_only():
    report = DataReport(source="x")
    splits = {"train": ["a", "b", "c"], "validation": ["b", "d"], "test": ["c", "a", "e"]}
    out = drop_overlap(splits, lambda items: items, report, "same item")
    assert out == {"train": ["a", "b", "c"], "validation": ["d"], "test": ["e"]}
    assert report.dropped == {"validation": {"also in train (same item)": 1}, "test": {"also in train (same item)": 2}}


# ----------------------------------------------------------------------------- overlap per domain
def test_text_rows_also_in_train_are_dropped_from_test(tmp_path):
    rows = make_reviews(100, seed=1)
    train, val, test = tmp_path / "train.csv", tmp_path / "val.csv", tmp_path / "test.csv"
    pd.DataFrame(rows[:60]).to_csv(train, index=False)
    pd.DataFrame(rows[80:]).to_csv(val, index=False)
    # 5 test rows repeat training texts: 3 with the same label, 2 with the other one (still a leak).
    leaked = [dict(r) for r in rows[:3]] + [{"text": r["text"], "label": "neg" if r["label"] == "pos" else "pos"}
                                          for r in rows[3:5]]
    pd.DataFrame(rows[60:80] + leaked).to_csv(test, index=False)
    bundle = _task("text-classification", tmp_path, source=str(train), validation_source=str(val),
                   test_source=str(test)).build_datasets()
    assert bundle.report.dropped["test"]["also in train (same text)"] == 5
    assert len(bundle.test) == 20 and not set(bundle.test.texts) & {r["text"] for r in rows[:60]}
    assert bundle.report.rows_kept["test"] == 20


def test_image_files_also_in_train_are_dropped_by_path(tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=6)
    files = sorted(images.rglob("*.png"))
    pd.DataFrame({"path": [str(f) for f in files], "label": [f.parent.name for f in files]}).to_csv(
        tmp_path / "train.csv", index=False)
    held = make_image_folder(tmp_path / "held", per_class=4, seed=5)
    held_files = sorted(held.rglob("*.png"))
    val_files = held_files[::2]
    test_files = held_files[1::2] + files[:4]  # 4 training images listed again
    for name, listed in (("val.csv", val_files), ("test.csv", test_files)):
        pd.DataFrame({"path": [str(f) for f in listed], "label": [f.parent.name for f in listed]}).to_csv(
            tmp_path / name, index=False)
    task = _task("image-classification", tmp_path, source=str(tmp_path / "train.csv"),
                 validation_source=str(tmp_path / "val.csv"), test_source=str(tmp_path / "test.csv"))
    bundle = task.build_datasets()
    assert bundle.report.dropped["test"]["also in train (same image)"] == 4
    assert len(bundle.test) == 6


def test_array_images_also_in_train_are_dropped_by_pixels(tmp_path):
    root = make_idx_folder(tmp_path / "idx", n_train=60, n_test=30)
    # Rewrite the test split so that its first 7 images are pixel copies of training images.
    import gzip

    def read(name):
        with gzip.open(root / name) as f:
            data = f.read()
        ndim = data[3]
        dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()

    train_x, train_y = read("train-images-idx3-ubyte.gz"), read("train-labels-idx1-ubyte.gz")
    test_x, test_y = read("t10k-images-idx3-ubyte.gz"), read("t10k-labels-idx1-ubyte.gz")
    test_x[:7], test_y[:7] = train_x[:7], train_y[:7]
    write_idx(root / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", test_y)
    # Validation is split off the training images: the copies of images that stayed in train leak.
    bundle = _task("image-classification", tmp_path, source=str(root)).build_datasets()
    leaks = len(set(range(7)) & set(bundle.train.records.keys))
    assert leaks >= 4  # 90% of the training images stay in train
    assert bundle.report.dropped["test"]["also in train (same image)"] == leaks
    assert len(bundle.test) == 30 - leaks


def test_audio_also_in_train_is_dropped_by_path(tmp_path):
    audio = tmp_path / "clips"
    audio.mkdir()
    lines = []
    for i in range(10):
        sf.write(audio / f"c{i}.wav", tone(0.4, 8000, 300 + 50 * i), 8000)
        lines.append(f"c{i}: word {i}")
    (audio / "train.txt").write_text("\n".join(lines[:6]) + "\n")
    (audio / "val.txt").write_text("\n".join(lines[6:8]) + "\n")
    (audio / "test.txt").write_text("\n".join(lines[8:] + lines[:3]) + "\n")  # c0-c2 are training clips
    task = _task("speech-recognition", tmp_path, source=str(audio / "train.txt"),
                 validation_source=str(audio / "val.txt"), test_source=str(audio / "test.txt"))
    bundle = task.build_datasets()
    assert bundle.report.dropped["test"]["also in train (same audio)"] == 3
    assert sorted(bundle.test.names) == ["c8", "c9"] and len(bundle.train) == 6


# ----------------------------------------------------------------------------- fewer than two classes
def test_text_with_one_class_is_an_error_naming_it(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame([r for r in make_reviews(60) if r["label"] == "pos"]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"at least two classes.*found 1: 'pos'"):
        _task("text-classification", tmp_path, source=str(path), labels=None).build_datasets()
    # Declaring two labels does not help when the data hold one of them.
    with pytest.raises(DataError, match=r"found 1: 'pos'"):
        _task("text-classification", tmp_path, source=str(path), labels=["neg", "pos"]).build_datasets()


def test_image_folder_with_one_class_is_an_error_naming_it(tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=10)
    for name in ("dog", "fox"):
        shutil.rmtree(images / name)
    with pytest.raises(DataError, match=r"at least two classes.*found 1: 'cat'"):
        _task("image-classification", tmp_path, source=str(images)).build_datasets()
