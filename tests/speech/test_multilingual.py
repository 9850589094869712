"""A multilingual Whisper without model.language: detection per utterance in evaluation and
predict, an error for training, and never a loop (the repetition guard bounds the output)."""

from __future__ import annotations

import pytest

from omnitune.core.api import build_task
from omnitune.core.base.errors import OmnituneError
from omnitune.core.base.recipe import validate_recipe
from omnitune.speech.audio import load_clip
from omnitune.speech.model import RepeatGuard
from omnitune.speech.testing import make_tiny_whisper, tiny_asr_recipe


def test_repeat_guard_finds_loops_by_hand():
    g = RepeatGuard(eos_id=0, times=3)
    assert g.looping([5, 7, 7, 7])  # one token three times
    assert g.looping([1, 2, 3, 1, 2, 3, 1, 2, 3])  # a 3-gram three times
    assert not g.looping([7, 7, 8, 7, 7])
    assert not g.looping([1, 2, 1, 2, 1])


@pytest.fixture(scope="module")
def ml_task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml")
    raw = tiny_asr_recipe(folder)
    raw["model"] = {"name": str(make_tiny_whisper(folder / "ml-whisper", multilingual=True)), "max_new_tokens": 40}
    return folder, raw


def _ids_len(task, model, path):
    feats = task.processor.feature_extractor(load_clip(path), sampling_rate=16000, return_tensors="pt").input_features
    return task.generate(model, feats).shape[1]


def test_detects_language_and_never_loops(ml_task):
    folder, raw = ml_task
    clip = str(folder / "audio" / "clip00.wav")
    task = build_task(validate_recipe(raw))
    model = task.build_model()
    out = task.predict(model, [clip])[0]
    assert out["language"] in {"en", "de", "fr"}
    # The random model repeats one token forever: the guard (6 repeats) ends it at 6 tokens (+ EOS,
    # + <|notimestamps|>), far below max_new_tokens=40, which is what it reaches without the guard.
    guarded = _ids_len(task, model, clip)
    assert guarded <= 8
    raw_off = {**raw, "model": {**raw["model"], "repeat_guard": 0}}
    off = build_task(validate_recipe(raw_off))
    assert _ids_len(off, model, clip) >= 40


def test_training_without_language_is_an_error(ml_task):
    _, raw = ml_task
    with pytest.raises(OmnituneError, match="set model.language|Set model.language"):
        build_task(validate_recipe(raw)).build_datasets()
    raw_en = {**raw, "model": {**raw["model"], "language": "english"}}
    bundle = build_task(validate_recipe(raw_en)).build_datasets()
    assert len(bundle.train) > 0
