"""Data sources, cleaning and reporting: ImageFolder, manifests, IDX, corrupt and missing files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnitune.core.base.errors import DataError
from omnitune.core.base.recipe import RegularizationConfig
from omnitune.vision.classification import ImageClassificationTask, VisionDataConfig, VisionModelConfig

from .conftest import make_image_folder


def make_task(source, **data_kw) -> ImageClassificationTask:
    model = VisionModelConfig(name="test_resnet", pretrained=False, image_size=32)
    data = VisionDataConfig(source=str(source), **data_kw)
    return ImageClassificationTask(model=model, data=data, regularization=RegularizationConfig(), seed=0)


def corrupt(folder: Path) -> list[str]:
    """One truncated PNG, one garbage .jpg, one empty file: three kinds of unreadable image."""
    good = Image.fromarray(np.full((40, 40, 3), 128, np.uint8))
    truncated = folder / "cat" / "truncated.png"
    good.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    (folder / "dog" / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    (folder / "fox" / "empty.png").write_bytes(b"")
    return sorted(str(p) for p in (truncated, folder / "dog" / "garbage.jpg", folder / "fox" / "empty.png"))


def all_paths(bundle) -> set[str]:
    return {ds.describe(i) for ds in (bundle.train, bundle.validation, bundle.test) for i in range(len(ds))}


def test_image_folder_splits_and_reports(image_folder):
    bundle = make_task(image_folder, val_size=0.2, test_size=0.2).build_datasets()
    assert bundle.label_names == ["cat", "dog", "fox"]
    assert (len(bundle.train), len(bundle.validation), len(bundle.test)) == (18, 6, 6)
    assert len(all_paths(bundle)) == 30  # the three splits are disjoint
    assert bundle.report.label_counts["validation"] == {"cat": 2, "dog": 2, "fox": 2}
    item = bundle.train[0]
    assert item["pixel_values"].shape == (3, 32, 32) and item["pixel_values"].dtype == np.float32


def test_corrupt_files_are_skipped_and_listed_by_path(image_folder):
    bad = corrupt(image_folder)
    bundle = make_task(image_folder, max_unreadable_share=0.2, val_size=0.2, test_size=0.2).build_datasets()
    assert not set(bad) & all_paths(bundle)
    report = bundle.report.to_dict()
    dropped = sum(d.get("unreadable image", 0) for d in report["dropped"].values())
    assert dropped == 3
    listed = " ".join(report["notes"])
    assert all(p in listed for p in bad)
    assert sorted(report["examples"]["unreadable image"]) == bad
    assert sum(report["rows_kept"].values()) == 30


def test_too_many_corrupt_files_stop_the_run_with_a_clear_error(image_folder):
    corrupt(image_folder)
    with pytest.raises(DataError, match=r"3 of 33 images .* unreadable.*max_unreadable_share"):
        make_task(image_folder, max_unreadable_share=0.05).build_datasets()


def test_header_check_misses_a_truncated_jpeg_but_full_check_does_not(image_folder):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = image_folder / "cat" / "cut.jpg"
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 2 // 3])
    full = make_task(image_folder, max_unreadable_share=0.5, verify_images="full").build_datasets()
    header = make_task(image_folder, max_unreadable_share=0.5, verify_images="header").build_datasets()
    assert str(path) not in all_paths(full)
    assert str(path) in all_paths(header)


def test_missing_declared_class_folder_is_named(image_folder):
    with pytest.raises(DataError, match="missing class folder.*: wolf"):
        make_task(image_folder, labels=["cat", "dog", "fox", "wolf"]).build_datasets()


def test_empty_class_folder_is_named(image_folder):
    (image_folder / "owl").mkdir()
    (image_folder / "owl" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty class folder.*owl"):
        make_task(image_folder).build_datasets()


def test_undeclared_class_folder_is_an_error_or_dropped(image_folder):
    with pytest.raises(DataError, match="fox"):
        make_task(image_folder, labels=["cat", "dog"]).build_datasets()
    bundle = make_task(image_folder, labels=["cat", "dog"], unknown_labels="drop").build_datasets()
    assert bundle.report.dropped["train"]["unknown label"] == 10
    assert len(all_paths(bundle)) == 20


def test_split_folders_are_used_as_given(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        make_image_folder(tmp_path / "ds" / split, per_class=n, seed=n)
    bundle = make_task(tmp_path / "ds").build_datasets()
    assert (len(bundle.train), len(bundle.validation), len(bundle.test)) == (18, 6, 9)
    assert all("/val/" in bundle.validation.describe(i) for i in range(6))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest_with_relative_paths(image_folder, fmt):
    rows = [{"path": f"{c}/{i:03d}.png", "label": c} for c in ("cat", "dog", "fox") for i in range(10)]
    rows.append(rows[0])  # a duplicate row
    manifest = image_folder / f"labels.{fmt}"
    if fmt == "csv":
        manifest.write_text("path,label\n" + "".join(f"{r['path']},{r['label']}\n" for r in rows))
    else:
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bundle = make_task(manifest).build_datasets()
    assert sum(bundle.report.rows_kept.values()) == 30
    assert bundle.report.dropped["train"]["duplicate path"] == 1
    assert bundle.train.describe(0).startswith(str(image_folder))


def test_manifest_pointing_at_missing_files_reports_them(image_folder):
    manifest = image_folder / "m.csv"
    lines = [f"{c}/{i:03d}.png,{c}" for c in ("cat", "dog", "fox") for i in range(10)] + ["cat/gone.png,cat"]
    manifest.write_text("path,label\n" + "\n".join(lines) + "\n")
    bundle = make_task(manifest, max_unreadable_share=0.1).build_datasets()
    assert str(image_folder / "cat" / "gone.png") in " ".join(bundle.report.notes)


def test_idx_folder_greyscale_becomes_three_channels(idx_folder):
    task = make_task(idx_folder, augment={"train": "none"}, max_samples=30)
    bundle = task.build_datasets()
    assert bundle.label_names == ["dark", "mid", "bright"]  # from labels.txt
    assert len(bundle.train) == 30 and len(bundle.test) == 30  # t10k files are the test split
    raw = bundle.train.raw_image(0)
    assert raw.shape == (28, 28, 3) and np.array_equal(raw[..., 0], raw[..., 2])
    # Brightness encodes the class in the fixture: the three channels carry it after resizing.
    x = bundle.test[0]["pixel_values"]
    assert x.shape == (3, 32, 32) and np.allclose(x[0], x[1])


def test_missing_source_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        make_task(tmp_path / "nope").build_datasets()
