"""Real-noise augmentation at a stated SNR, and the extra evaluation sets (a GSM codec twin, clean
clips mixed with music at a fixed SNR) scored before and after fine-tuning; ASR retention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from omnitune.core.api import build_task, train
from omnitune.core.base.recipe import validate_recipe
from omnitune.speech.augment import NoiseAug, augment_wave, measured_snr_db, noise_segment
from omnitune.speech.testing import make_audio_folder, tiny_asr_recipe, tone


def _noise_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    sf.write(root / "a.wav", (0.1 * rng.standard_normal(4000)).astype("float32"), 8000)  # 0.5 s: loops
    sf.write(root / "b.wav", tone(0.3, 8000, 1000.0, 0.2), 8000)
    return root


def test_file_noise_mixes_at_the_drawn_snr_and_is_seeded(tmp_path):
    folder = _noise_folder(tmp_path / "noise")
    clean = tone(2.0, 16000, 300.0)  # longer than both recordings: the segment loops
    aug = [NoiseAug(name="noise", prob=1.0, min_snr_db=7.0, max_snr_db=7.0, files=str(folder))]
    noisy = augment_wave(clean, aug, np.random.default_rng(3), 16000)
    assert noisy.shape == clean.shape
    assert measured_snr_db(clean, noisy) == pytest.approx(7.0, abs=1e-3)
    again = augment_wave(clean, aug, np.random.default_rng(3), 16000)
    other = augment_wave(clean, aug, np.random.default_rng(4), 16000)
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, other)


def test_noise_segment_loops_a_short_recording():
    rec = np.arange(5, dtype=np.float32)
    seg = noise_segment([rec], 12, np.random.default_rng(0))
    start = int(seg[0])
    assert seg.tolist() == [float((start + i) % 5) for i in range(12)]


def _recipe_with_sets(tmp_path: Path) -> dict:
    raw = tiny_asr_recipe(tmp_path)
    audio = Path(raw["data"]["source"])
    gsm = tmp_path / "gsm"
    gsm.mkdir()
    for i in range(12):  # the codec twin: same names, GSM 06.10 files
        data, sr = sf.read(audio / f"clip{i:02d}.wav", dtype="float32")
        sf.write(gsm / f"clip{i:02d}.gsm", data, sr, format="RAW", subtype="GSM610")
    (gsm / "transcripts.txt").write_text((audio / "transcripts.txt").read_text())
    (gsm / "quiet.wav").write_bytes((audio / "quiet.wav").read_bytes())
    (gsm / "orphan.wav").write_bytes((audio / "orphan.wav").read_bytes())
    (gsm / "broken.wav").write_bytes(b"x")
    raw["data"]["eval_sets"] = {"gsm": {"source": str(gsm)},
                                "music_10db": {"noise": str(_noise_folder(tmp_path / "noise")), "snr_db": 10}}
    return raw


def test_eval_sets_load_the_test_clips(tmp_path):
    task = build_task(validate_recipe(_recipe_with_sets(tmp_path)))
    bundle = task.build_datasets()
    test_names = sorted(bundle.test.names)
    gsm, _ = task.eval_set("gsm")
    assert sorted(Path(n).stem for n in gsm.names) == sorted(Path(n).stem for n in test_names)
    noisy, _ = task.eval_set("music_10db")
    assert noisy.names == bundle.test.names
    for clean, mixed in zip(bundle.test.clips, noisy.clips):
        assert measured_snr_db(clean.wave, mixed.wave) == pytest.approx(10.0, abs=1e-3)
    again, _ = task.eval_set("music_10db")  # deterministic mixing: the same audio every time
    assert all(np.array_equal(a.wave, b.wave) for a, b in zip(noisy.clips, again.clips))


def test_tiny_run_reports_eval_sets_and_retention(tmp_path):
    raw = _recipe_with_sets(tmp_path)
    general = make_audio_folder(tmp_path / "general", n=10)
    raw["eval"]["retention"] = str(general)
    run = train(validate_recipe(raw))
    sets = json.loads((run.run_dir / "eval_sets.json").read_text())
    assert set(sets) == {"gsm", "music_10db"}
    for r in sets.values():
        assert {"wer", "cer"} <= set(r["before"]) and r["wer_change"] == pytest.approx(r["after"]["wer"] - r["before"]["wer"])
    assert "Extra evaluation sets" in (run.run_dir / "report.md").read_text()
    assert json.loads((run.run_dir / "metrics.json").read_text())["eval_sets"] == sets
    ret = run.metrics["retention"]
    assert ret["mode"] == "metrics" and ret["samples"] == 10 and "wer" in ret["change"]
