"""`omnitune cv` on image data: ImageFolder directories and manifests become per-fold manifests that
the image-classification task reads back; sources without image files are refused up front."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from omnitune.core.api import build_task, cross_validate
from omnitune.core.studies.cv import write_folds
from omnitune.core.base.errors import DataError
from omnitune.core.base.recipe import load_recipe

from .conftest import make_idx_folder, make_image_folder


def _recipe(tmp_path: Path, source, **data) -> Path:
    raw = {
        "name": "tiny-vision", "task": "image-classification", "seed": 0,
        "model": {"name": "test_resnet", "pretrained": False, "image_size": 32},
        "data": {"source": str(source), "val_size": 0.2, "test_size": 0.1, "verify_images": "header", **data},
        "train": {"epochs": 1, "max_steps": 2, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3,
                  "precision": "fp32", "save_checkpoints": False},
        "output": {"dir": str(tmp_path / "runs"), "run_name": "run"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _all_images(root: Path) -> set[str]:
    return {str(p.absolute()) for p in root.rglob("*.png")}


def test_image_folder_folds_are_disjoint_stratified_cover_and_load(tmp_path):
    # Split sub-folders (train/ and val/) are pooled: 9 images a class in all.
    root = tmp_path / "images"
    make_image_folder(root / "train", per_class=6, seed=0)
    make_image_folder(root / "val", per_class=3, seed=1)
    rec = load_recipe(_recipe(tmp_path, root))
    folds = write_folds(rec, 3, tmp_path / "cv" / "data", build_task(rec))
    assert folds.manifests and folds.stratify == "label" and folds.labels == ["cat", "dog", "fox"]
    tests = [pd.read_csv(d / "test.csv") for d in folds.dirs]
    held_out = pd.concat(tests)
    assert set(held_out["path"]) == _all_images(root) and not held_out["path"].duplicated().any()  # cover, disjoint
    for i, (fold_dir, test) in enumerate(zip(folds.dirs, tests)):
        train = pd.read_csv(fold_dir / "train.csv")
        assert not set(train["path"]) & set(test["path"])
        assert set(train["path"]) | set(test["path"]) == _all_images(root)
        assert Counter(test["label"]) == {"cat": 3, "dog": 3, "fox": 3}  # stratified: 1/3 of every class
        # Each label is the image's class folder, and paths are absolute.
        assert all(Path(p).is_absolute() and Path(p).parent.name == lbl for p, lbl in zip(test["path"], test["label"]))
        # The task reads the fold back: its test split is exactly the held-out images.
        fold_rec = load_recipe(_recipe(tmp_path, root), [f"{k}={json.dumps(v)}" for k, v in folds.overrides(i).items()])
        bundle = build_task(fold_rec).build_datasets()
        assert len(bundle.test) == len(test) == 9
        assert sorted(bundle.test.describe(j) for j in range(len(bundle.test))) == sorted(test["path"])
        assert len(bundle.train) + len(bundle.validation) == len(train)


def test_manifest_source_is_split_by_path(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=4)
    files = sorted(root.rglob("*.png"))
    # Relative paths (from the manifest's folder) and one file listed twice.
    rows = [{"path": str(p.relative_to(root)), "label": p.parent.name} for p in files] + \
           [{"path": str(files[0].relative_to(root)), "label": files[0].parent.name}]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    rec = load_recipe(_recipe(tmp_path, root / "manifest.csv"))
    folds = write_folds(rec, 2, tmp_path / "cv", build_task(rec))
    held_out = pd.concat(pd.read_csv(d / "test.csv") for d in folds.dirs)
    assert sorted(held_out["path"]) == sorted(str(p.absolute()) for p in files)


@pytest.mark.parametrize("kind", ["idx", "hub"])
def test_sources_without_image_files_are_refused_before_any_run(tmp_path, kind):
    source = make_idx_folder(tmp_path / "idx") if kind == "idx" else "hub:someone/images"
    with pytest.raises(DataError, match=r"data\.source .*(ImageFolder|manifest)"):
        cross_validate(_recipe(tmp_path, source), folds=2, out_dir=tmp_path / "cv")
    assert not (tmp_path / "cv").exists() and not (tmp_path / "runs").exists()


def test_two_fold_cv_end_to_end(tmp_path):
    # 15 images a fold train on: 12 train (batches of 8 and 4; BatchNorm needs 2+) and 3 validation.
    root = make_image_folder(tmp_path / "images", per_class=10)
    out = cross_validate(_recipe(tmp_path, root), folds=2, out_dir=tmp_path / "cv")
    assert len(out["folds"]) == 2 and all(0 <= f["accuracy"] <= 1 for f in out["folds"])
    report = (tmp_path / "cv" / "cv_report.md").read_text()
    assert "Stratified by `label`" in report and "**accuracy: " in report
    mean, std = out["summary"]["accuracy"]["mean"], out["summary"]["accuracy"]["std"]
    assert f"| accuracy | {mean:.4f} | {std:.4f} |" in report
    for i in range(2):
        run = tmp_path / "cv" / "runs" / f"fold-{i}"
        data_report = json.loads((run / "data_report.json").read_text())
        assert data_report["rows_kept"]["test"] == len(pd.read_csv(tmp_path / "cv" / "data" / f"fold_{i}" / "test.csv"))
        assert load_recipe(run / "recipe.yaml").data.labels == ["cat", "dog", "fox"]
