"""`omnitune cv` on speech data: a transcript folder becomes per-fold transcript manifests (absolute
audio paths, unstratified) that the speech-recognition task reads back; Hub sources are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from omnitune.core.api import build_task, cross_validate
from omnitune.core.studies.cv import write_folds
from omnitune.core.base.errors import DataError
from omnitune.core.base.recipe import load_recipe


def _recipe(tmp_path: Path, model: Path, source) -> Path:
    raw = {
        "name": "tiny-asr", "task": "speech-recognition", "seed": 0,
        "model": {"name": str(model), "max_new_tokens": 4},
        "data": {"source": str(source), "val_size": 0.2, "test_size": 0.2, "max_bad_share": 0.5},
        "train": {"epochs": 1, "max_steps": 2, "batch_size": 2, "eval_batch_size": 4, "threads": 1,
                  "precision": "fp32", "save_checkpoints": False},
        "output": {"dir": str(tmp_path / "runs"), "run_name": "run"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_transcript_folder_folds_are_disjoint_and_cover(tmp_path, tiny_whisper, audio_folder):
    rec = load_recipe(_recipe(tmp_path, tiny_whisper, audio_folder))
    folds = write_folds(rec, 3, tmp_path / "cv", build_task(rec))
    assert folds.manifests and folds.stratify is None and folds.labels is None
    tests = [pd.read_csv(d / "test.csv", keep_default_na=False) for d in folds.dirs]
    held_out = pd.concat(tests)
    # Every transcribed clip with an audio file (12 good, one silent, one broken); the line without
    # audio ("ghost") and the audio without a line ("orphan") are not rows.
    expected = {str((audio_folder / f"clip{i:02d}.wav").absolute()) for i in range(12)} | \
        {str((audio_folder / n).absolute()) for n in ("quiet.wav", "broken.wav")}
    assert set(held_out["path"]) == expected and not held_out["path"].duplicated().any()
    assert sorted(len(t) for t in tests) == [4, 5, 5]
    for fold_dir, test in zip(folds.dirs, tests):
        train = pd.read_csv(fold_dir / "train.csv", keep_default_na=False)
        assert not set(train["path"]) & set(test["path"]) and len(train) + len(test) == 14
    texts = dict(zip(held_out["path"], held_out["text"]))
    assert texts[str((audio_folder / "clip03.wav").absolute())] == "four seven"


def test_hub_source_is_refused_before_any_run(tmp_path, tiny_whisper):
    with pytest.raises(DataError, match=r"data\.source hub:.*transcript CSV"):
        cross_validate(_recipe(tmp_path, tiny_whisper, "hub:someone/speech"), folds=2, out_dir=tmp_path / "cv")
    assert not (tmp_path / "cv").exists()


def test_two_fold_cv_end_to_end(tmp_path, tiny_whisper, audio_folder):
    out = cross_validate(_recipe(tmp_path, tiny_whisper, audio_folder), folds=2, out_dir=tmp_path / "cv")
    assert len(out["folds"]) == 2 and all(f["wer"] >= 0 for f in out["folds"])
    report = (tmp_path / "cv" / "cv_report.md").read_text()
    assert "Unstratified" in report and "**wer: " in report and "| cer |" in report
    for i in range(2):
        test = pd.read_csv(tmp_path / "cv" / "data" / f"fold_{i}" / "test.csv", keep_default_na=False)
        data_report = json.loads((tmp_path / "cv" / "runs" / f"fold-{i}" / "data_report.json").read_text())
        # The run's test split is the held-out fold (less the bad clips it drops and reports).
        assert data_report["rows_read"]["test"] == len(test)
        assert data_report["rows_kept"]["test"] + sum(data_report["dropped"].get("test", {}).values()) == len(test)
