"""Speaker-grouped splits (no speaker in two splits) and per-speaker WER in the report."""

from __future__ import annotations

import csv

from omnitune.core.api import build_task
from omnitune.core.base.data import group_split
from omnitune.core.base.recipe import validate_recipe
from omnitune.speech.testing import tiny_asr_recipe


def test_group_split_keeps_groups_whole():
    groups = [f"s{i % 7}" for i in range(70)]
    parts = group_split(groups, [0.2, 0.2], seed=3)
    sets = [{groups[i] for i in p} for p in parts]
    assert sum(len(p) for p in parts) == 70
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert all(len(p) >= 14 for p in parts[1:])  # each fractional part holds at least 20 %


def test_speaker_column_groups_the_made_splits_and_reports_wer(tmp_path):
    raw = tiny_asr_recipe(tmp_path)
    audio = tmp_path / "audio"
    with open(audio / "transcripts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text", "speaker"])
        for i in range(12):
            w.writerow([f"clip{i:02d}.wav", f"word {i}", f"spk{i % 4}"])
    raw["data"].update(transcripts="transcripts.csv", speaker_column="speaker", max_bad_share=0.5)
    task = build_task(validate_recipe(raw))
    bundle = task.build_datasets()
    speakers = {k: {c.speaker for c in getattr(bundle, k).clips} for k in ("train", "validation", "test")}
    assert speakers["train"] and speakers["test"] and speakers["validation"]
    assert not (speakers["train"] & speakers["test"]) and not (speakers["train"] & speakers["validation"])
    assert not (speakers["validation"] & speakers["test"])
    # Per-speaker WER by hand: A has 1 error in 4 words (25 %), B 2 errors in 2 words (100 %).
    block = task._speaker_block("test", ["A", "A", "B"], ["one two", "three for", "x y"],
                                ["one two", "three four", "five six"])
    assert "| A | 2 | 25.00 |" in block and "| B | 1 | 100.00 |" in block
