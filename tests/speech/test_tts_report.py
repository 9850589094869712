"""The voice metrics on hand-made signals, and the run report of a tiny VITS: held-out sentences
synthesised before and after training, linked from report.md as WAV files and mel images, with
MCD-DTW and F0 distances in metrics.json (ASR scorer off, or a tiny random Whisper)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import soundfile as sf

SR = 8000


def _sine(freq: float, seconds: float = 0.5, sr: int = SR) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def test_dtw_path_hand_case():
    from omnitune.speech.tts_metrics import dtw_path

    # A 3 x 4 cost matrix whose cheap cells are (0,0) (1,1) (1,2) (2,3): the path takes them all.
    cost = np.array([[0, 5, 5, 5], [5, 0, 0, 5], [5, 5, 5, 0]], dtype=float)
    assert dtw_path(cost) == [(0, 0), (1, 1), (1, 2), (2, 3)]


def test_mcd_is_zero_for_the_same_wave_and_grows_with_the_difference():
    from omnitune.speech.tts_metrics import mcd_dtw

    a = _sine(300)
    assert mcd_dtw(a, a, SR) == pytest.approx(0.0, abs=1e-6)
    # A time-stretched copy (every sample twice) aligns under DTW: far closer than another pitch.
    assert mcd_dtw(a, _sine(300, 1.0), SR) < 0.5 * mcd_dtw(a, _sine(900), SR)


def test_f0_of_sines_and_their_distance():
    from omnitune.speech.tts_metrics import f0_distance, f0_track

    low, high = f0_track(_sine(100), SR), f0_track(_sine(200), SR)
    assert len(low) > 20 and np.median(low) == pytest.approx(100, rel=0.02)
    assert np.median(high) == pytest.approx(200, rel=0.02)
    d = f0_distance(high, low)  # an octave: 12 semitones
    assert d["f0_median_diff_st"] == pytest.approx(12.0, abs=0.4)
    assert d["f0_wasserstein_st"] == pytest.approx(12.0, abs=0.4)
    assert math.isnan(f0_distance(np.array([]), low)["f0_wasserstein_st"])


def _train(tmp_path, **model):
    from omnitune.core.api import train
    from omnitune.core.base.recipe import validate_recipe
    from omnitune.speech.testing_tts import tiny_tts_recipe

    raw = tiny_tts_recipe(tmp_path / "fixture")
    raw["model"].update(model)
    raw["train"].update({"max_steps": 2, "threads": 1})
    raw["eval"]["baseline"] = True
    return train(validate_recipe(raw), {"output.run_name": "run"})


def test_report_links_before_and_after_audio_and_mel_images(tmp_path):
    from omnitune.speech.tts_metrics import mcd_dtw

    result = _train(tmp_path)
    run = result.run_dir
    samples = result.metrics["samples"]
    for stage in ("before", "after"):
        assert math.isfinite(samples[stage]["mcd_dtw_db"]) and "wer" not in samples[stage]
    assert json.loads((run / "metrics.json").read_text())["samples"] == json.loads(json.dumps(samples))
    report = (run / "report.md").read_text()
    links = re.findall(r"\]\((samples/[^)]+)\)", report)
    for stage in ("target", "before", "after"):
        for i in range(2):  # tiny recipe: model.sample_sentences 2
            assert f"samples/{stage}-{i:02d}.wav" in links and f"samples/{stage}-{i:02d}-mel.png" in links
    for link in links:
        assert (run / link).is_file(), link
    assert "| mcd_dtw_db |" in report and "No WER: no ASR scorer" in report
    # The reported MCD is the one of the files written: recomputed from the WAVs read back.
    mcds = []
    for i in range(2):
        synth, sr = sf.read(run / f"samples/after-{i:02d}.wav", dtype="float32")
        target, _ = sf.read(run / f"samples/target-{i:02d}.wav", dtype="float32")
        mcds.append(mcd_dtw(synth, target, sr))
    assert samples["after"]["mcd_dtw_db"] == pytest.approx(float(np.mean(mcds)), rel=1e-3)
    # The trained voice sounds different from the starting one.
    before, _ = sf.read(run / "samples/before-00.wav")
    after, _ = sf.read(run / "samples/after-00.wav")
    assert len(before) != len(after) or not np.allclose(before, after)


def test_asr_scorer_gives_a_wer(tmp_path):
    from omnitune.speech.testing import make_tiny_whisper

    whisper = make_tiny_whisper(tmp_path / "tiny-whisper")
    result = _train(tmp_path, sample_asr=str(whisper), sample_sentences=1)
    for stage in ("before", "after"):
        wer = result.metrics["samples"][stage]["wer"]
        assert wer >= 0.0  # a random Whisper hears nonsense: a WER, not a good one
    details = json.loads((result.run_dir / "samples" / "after.json").read_text())
    assert len(details["transcripts"]) == 1
    assert "after heard" in (result.run_dir / "report.md").read_text()


def test_unloadable_asr_scorer_costs_the_wer_only(tmp_path):
    result = _train(tmp_path, sample_asr=str(tmp_path / "no-such-whisper"), sample_sentences=1)
    assert "wer" not in result.metrics["samples"]["after"]
    assert math.isfinite(result.metrics["samples"]["after"]["mcd_dtw_db"])
    assert "could not be loaded" in (result.run_dir / "report.md").read_text()
