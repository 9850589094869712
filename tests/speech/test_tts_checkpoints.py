"""transformers VITS checkpoints (MMS-TTS, kakao VITS) as ``model.name``: a tiny VitsModel saved with
save_pretrained plus a VitsTokenizer of a hand-written vocabulary loads, trains through
omnitune.train, saves its front end with the run, and predicts WAV files; a sentence the tokenizer
maps to nothing is a one-line error naming it. No Hub download."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from omnitune.core.base.errors import DataError, OmnituneError


@pytest.fixture(scope="module")
def hf_vits(tmp_path_factory):
    from omnitune.speech.testing_tts import make_tiny_hf_vits

    return make_tiny_hf_vits(tmp_path_factory.mktemp("hf") / "tiny-mms")


def _raw(tmp_path, model_dir):
    from omnitune.speech.testing_tts import tiny_tts_recipe

    raw = tiny_tts_recipe(tmp_path / "fixture")
    raw["model"]["name"] = str(model_dir)
    raw["train"].update({"max_steps": 2, "threads": 1})
    return raw


def test_vocab_ids_by_hand(hf_vits):
    from transformers import VitsTokenizer

    from omnitune.speech.vits_tokenizer import text_ids

    tok = VitsTokenizer.from_pretrained(str(hf_vits))
    # vocab: "_" 0, " " 1, a..z 2..27, "<unk>" 28. Lower-cased, "!" and "7" dropped (and reported),
    # a blank (0) before, between and after the symbols.
    assert text_ids(tok, "Hi a7!") == ([0, 9, 0, 10, 0, 1, 0, 2, 0], ["7", "!"])
    assert text_ids(tok, "42 ?!") == ([], ["4", "2", "?", "!"])
    tok.add_blank = False
    assert text_ids(tok, "ab") == ([2, 3], [])


def test_source_kinds(tmp_path, hf_vits):
    from omnitune.speech.vits_tokenizer import checkpoint_kind

    assert checkpoint_kind(hf_vits) == "transformers"
    assert checkpoint_kind("facebook/mms-tts-eng") == "transformers"  # a Hub id: transformers downloads it
    assert checkpoint_kind("kakao-enterprise/vits-ljs") == "transformers"
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(OmnituneError, match="'bert' model, not a VITS"):
        checkpoint_kind(tmp_path / "bert")
    assert checkpoint_kind(tmp_path / "nothing-here") is None


def test_checkpoint_trains_saves_front_end_and_predicts(tmp_path, hf_vits):
    from safetensors.torch import load_file

    from omnitune.core.api import build_task, predict, train
    from omnitune.core.base.recipe import validate_recipe

    rec = validate_recipe(_raw(tmp_path, hf_vits))
    task = build_task(rec)
    assert task.frontend == {"phonemizer": "vits-tokenizer", "sampling_rate": 8000}
    # The checkpoint's weights, not a fresh init: the text encoder's embedding is the saved one.
    saved = load_file(str(hf_vits / "model.safetensors"))
    model = task.build_model()
    torch.testing.assert_close(model.vits.text_encoder.embed_tokens.weight.detach(),
                               saved["text_encoder.embed_tokens.weight"])
    result = train(rec, {"output.run_name": "run"})
    assert result.metrics["steps"] == 2 and np.isfinite(result.metrics["test"]["mel_l1"])
    model_dir = result.run_dir / "model"
    assert json.loads((model_dir / "omnitune_tts.json").read_text())["phonemizer"] == "vits-tokenizer"
    assert (model_dir / "vocab.json").is_file() and (model_dir / "tokenizer_config.json").is_file()
    # predict from the run folder alone (the tokenizer comes from the saved model), WAVs at 8 kHz
    out = predict(result.run_dir, ["one two", "Three!"])
    for row in out:
        wave, sr = sf.read(row["wav"])
        assert sr == 8000 and len(wave) > 0 and row["seconds"] == pytest.approx(len(wave) / sr, abs=1e-3)
    with pytest.raises(DataError) as err:
        predict(result.run_dir, ["123 ?!"])
    message = str(err.value)
    assert "'123 ?!'" in message and "\n" not in message


def test_phonemizer_field_is_refused_for_a_checkpoint(tmp_path, hf_vits):
    from omnitune.core.api import build_task
    from omnitune.core.base.recipe import validate_recipe

    raw = _raw(tmp_path, hf_vits)
    raw["model"]["phonemizer"] = "characters"
    with pytest.raises(OmnituneError, match="model.phonemizer"):
        build_task(validate_recipe(raw)).frontend
