"""data.storage for images: disk (decoded once into core/mmap_store, read back per item) gives the
same items, drops, report and training run as memory; bad files are still named."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from omnitune.core.base.errors import DataError
from omnitune.core.base.mmap_store import ArrayStore
from omnitune.vision.data import ArrayLoader, _StoredFiles

from .conftest import make_idx_folder, make_image_folder
from .test_data import corrupt, make_task


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNITUNE_CACHE", str(tmp_path / "cache"))


def stores(tmp_path) -> list:
    return sorted(p.name for p in (tmp_path / "cache" / "arrays").iterdir() if ArrayStore.open(p))


def items(ds) -> tuple:
    return ([ds.describe(i) for i in range(len(ds))], [int(ds.labels[i]) for i in range(len(ds))],
            np.stack([ds.raw_image(i) for i in range(len(ds))]), np.stack([ds[i]["pixel_values"] for i in range(len(ds))]))


def same_bundles(a, b) -> None:
    for split in ("train", "validation", "test"):
        da, db = getattr(a, split), getattr(b, split)
        for x, y in zip(items(da), items(db)):
            if isinstance(x, np.ndarray):
                np.testing.assert_array_equal(x, y)
            else:
                assert x == y
    ra, rb = a.report.to_dict(), b.report.to_dict()
    notes_a = [n for n in ra.pop("notes") if not n.startswith("data.storage")]
    notes_b = [n for n in rb.pop("notes") if not n.startswith("data.storage")]
    assert ra == rb and notes_a == notes_b


def source(kind: str, tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=8)
    if kind == "folder":
        return folder
    if kind == "manifest":
        paths = sorted(p for p in folder.rglob("*.png"))
        path = tmp_path / "images.csv"
        pd.DataFrame({"path": [str(p.relative_to(folder)) for p in paths] + ["cat/000.png"],  # one listed twice
                      "label": [p.parent.name for p in paths] + ["cat"]}).to_csv(folder / "images.csv", index=False)
        return folder / "images.csv"
    return make_idx_folder(tmp_path / "idx", n_train=45, n_test=15)


@pytest.mark.parametrize("kind", ["folder", "manifest", "idx"])
def test_disk_gives_the_same_items_and_report_as_memory(kind, tmp_path):
    src = source(kind, tmp_path)
    bad = corrupt(tmp_path / "images") if kind == "folder" else []
    kw = {"val_size": 0.2, "test_size": 0.2, "max_unreadable_share": 0.2, "augment": {"train": "heavy"}}
    memory = make_task(src, storage="memory", **kw).build_datasets()
    disk = make_task(src, storage="disk", **kw).build_datasets()
    same_bundles(memory, disk)
    assert "data.storage disk: disk" in disk.report.notes
    loader = disk.train.records.load
    assert isinstance(loader, _StoredFiles) or isinstance(getattr(loader, "images", None), ArrayStore)
    assert isinstance(memory.train.records.load, ArrayLoader if kind == "idx" else type(memory.train.records.load))
    if bad:  # the unreadable files are dropped and named exactly as in memory
        assert sorted(disk.report.examples["unreadable image"]) == bad
        assert disk.report.dropped["train"]["unreadable image"] + sum(
            disk.report.dropped.get(s, {}).get("unreadable image", 0) for s in ("validation", "test")) == 3
    if kind == "manifest":
        assert disk.report.dropped["train"]["duplicate path"] == 1


def test_second_run_reuses_the_stores_and_a_changed_file_gets_a_new_one(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=6)
    make_task(folder, storage="disk").build_datasets()
    first = stores(tmp_path)
    assert len(first) == 3  # one per split
    make_task(folder, storage="disk").build_datasets()
    assert stores(tmp_path) == first
    from PIL import Image

    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(folder / "cat" / "000.png")
    make_task(folder, storage="disk").build_datasets()
    assert len(set(stores(tmp_path)) - set(first)) == 1  # only the split holding cat/000.png


def test_unreadable_file_with_verification_off_is_named(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=6)
    (folder / "dog" / "garbage.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"garbage\.png: cannot read image"):
        make_task(folder, storage="disk", verify_images="none", val_size=0.01, test_size=0.01).build_datasets()
    assert not (tmp_path / "cache" / "arrays").exists() or not stores(tmp_path)


def test_auto_picks_memory_for_small_sources_and_says_so(tmp_path):
    bundle = make_task(make_idx_folder(tmp_path / "idx"), storage="auto").build_datasets()
    note = [n for n in bundle.report.notes if n.startswith("data.storage")]
    assert len(note) == 1 and note[0].startswith("data.storage auto: memory")
    assert isinstance(bundle.train.records.load.images, np.ndarray)


def test_training_on_disk_matches_memory(tmp_path):
    """Same recipe and seed, memory vs disk: the same logged losses and the same final weights."""
    from safetensors.numpy import load_file

    from omnitune.core.api import train

    from ..conftest import write_recipe

    idx = make_idx_folder(tmp_path / "idx", n_train=48, n_test=12)
    results = {}
    for storage in ("memory", "disk"):
        result = train(write_recipe(tmp_path / f"{storage}.yaml", {
            "name": "tiny", "task": "image-classification", "seed": 1,
            "model": {"name": "test_resnet", "pretrained": False, "image_size": 32},
            "data": {"source": str(idx), "storage": storage, "augment": {"train": "light"}},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "precision": "fp32", "log_every": 1, "threads": 1},
            "eval": {"baseline": False},
            "output": {"dir": str(tmp_path / "runs"), "run_name": storage}}))
        events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
        losses = [e["loss"] for e in events if e.get("event") == "train" and "loss" in e]
        weights = load_file(result.run_dir / "model" / "model.safetensors")
        results[storage] = (losses, weights, result.metrics["test"])
    (lm, wm, tm), (ld, wd, td) = results["memory"], results["disk"]
    assert len(lm) >= 8 and lm == ld
    assert wm.keys() == wd.keys() and all(np.array_equal(wm[k], wd[k]) for k in wm)
    assert tm == td
