"""predict on files longer than the window: consecutive chunks that cover the whole file, with times."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from omnitune.core.api import build_task
from omnitune.core.base.recipe import validate_recipe
from omnitune.speech.audio import chunk_bounds
from omnitune.speech.testing import tiny_asr_recipe, tone


def test_chunks_cover_the_file_and_cut_at_silence():
    sr = 100
    wave = np.ones(2500, dtype=np.float32)
    wave[850:870] = 0.0  # a pause 8.5-8.7 s, inside the last 5 s of the first 10 s window
    bounds = chunk_bounds(wave, window=1000, sample_rate=sr, search_seconds=5, frame_seconds=0.1)
    assert bounds[0][0] == 0 and bounds[-1][1] == 2500
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(0 < e - s <= 1000 for s, e in bounds)
    assert 850 < bounds[0][1] <= 870  # the first cut falls in the pause


def test_predict_transcribes_a_70_second_file_in_chunks(tmp_path):
    raw = tiny_asr_recipe(tmp_path)
    path = tmp_path / "long.wav"
    sf.write(path, np.concatenate([tone(35, 8000, 300), tone(35, 8000, 500)]), 8000)
    task = build_task(validate_recipe(raw))
    out = task.predict(task.build_model(), [str(path)])[0]
    segs = out["segments"]
    assert len(segs) == 3  # 70 s in windows of at most 30 s
    assert segs[0]["start"] == 0 and segs[-1]["end"] == 70.0
    assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:]))
    assert all(s["end"] - s["start"] <= 30 for s in segs)
