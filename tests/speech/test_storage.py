"""data.storage for speech: disk (waves decoded and resampled once into core/mmap_store, read back
per item) gives the same clips, drops, report, features and training run as memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from omnitune.core.base.mmap_store import ArrayStore

from ..conftest import write_recipe
from .conftest import tone
from .test_asr_task import make_task


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNITUNE_CACHE", str(tmp_path / "cache"))


def stores(tmp_path) -> list[str]:
    root = tmp_path / "cache" / "arrays"
    return sorted(p.name for p in root.iterdir() if ArrayStore.open(p)) if root.exists() else []


def test_disk_gives_the_same_clips_report_and_features(tiny_whisper, audio_folder):
    # An empty transcript too: it is skipped before its audio counts, in both modes.
    sf.write(audio_folder / "blank.wav", tone(0.5, 8000, 500), 8000)
    with open(audio_folder / "transcripts.txt", "a") as f:
        f.write("blank: [noise]\n")
    memory = make_task(tiny_whisper, audio_folder, storage="memory").build_datasets()
    disk = make_task(tiny_whisper, audio_folder, storage="disk").build_datasets()
    assert disk.train.clips[0]._wave is None and memory.train.clips[0]._wave is not None
    for split in ("train", "validation", "test"):
        m, d = getattr(memory, split), getattr(disk, split)
        assert m.names == d.names and m.lengths() == d.lengths()
        for a, b in zip(m.clips, d.clips):
            assert a.wave.dtype == b.wave.dtype == np.float32 and np.array_equal(a.wave, b.wave)
            assert a.num_samples == len(b.wave)
        for i in range(len(m)):
            x, y = m[i], d[i]
            np.testing.assert_array_equal(x["input_features"], y["input_features"])
            assert x["labels"] == y["labels"] and x["text"] == y["text"]
    rm, rd = memory.report.to_dict(), disk.report.to_dict()
    notes_m, notes_d = rm.pop("notes"), rd.pop("notes")
    assert rm == rd
    assert [n for n in notes_m if not n.startswith("data.storage")] == \
        [n for n in notes_d if not n.startswith("data.storage")]
    assert "data.storage disk: disk" in notes_d
    assert rd["examples"]["silent"] == ["quiet"] and rd["examples"]["unreadable"] == ["broken"]
    assert rd["examples"]["empty transcript after normalisation"] == ["blank"]


def test_stored_waves_are_reused_and_follow_the_files(tiny_whisper, audio_folder, tmp_path):
    make_task(tiny_whisper, audio_folder, storage="disk").build_datasets()
    first = stores(tmp_path)
    assert len(first) == 3  # one per split
    make_task(tiny_whisper, audio_folder, storage="disk").build_datasets()
    assert stores(tmp_path) == first
    sf.write(audio_folder / "clip00.wav", tone(0.6, 8000, 330), 8000)  # a changed recording
    bundle = make_task(tiny_whisper, audio_folder, storage="disk").build_datasets()
    assert len(set(stores(tmp_path)) - set(first)) == 1
    clips = {c.name: c for ds in (bundle.train, bundle.validation, bundle.test) for c in ds.clips}
    assert clips["clip00"].num_samples == 9600  # 0.6 s at 16 kHz, not the old 0.5 s


def test_augmented_items_and_workers_agree(tiny_whisper, audio_folder):
    from torch.utils.data import DataLoader

    aug = [{"name": "noise", "prob": 1.0}, {"name": "specaugment", "prob": 1.0}]
    memory = make_task(tiny_whisper, audio_folder, storage="memory", augment=aug).build_datasets().train
    disk = make_task(tiny_whisper, audio_folder, storage="disk", augment=aug).build_datasets().train
    memory.set_epoch(2)
    disk.set_epoch(2)
    loader = DataLoader(disk, batch_size=2, collate_fn=list, num_workers=2)  # the store pickles by path
    from_workers = [item["input_features"] for batch in loader for item in batch]
    for i, feats in enumerate(from_workers):
        np.testing.assert_array_equal(feats, memory[i]["input_features"])


def test_auto_notes_its_choice(tiny_whisper, audio_folder):
    bundle = make_task(tiny_whisper, audio_folder, storage="auto").build_datasets()
    note = [n for n in bundle.report.notes if n.startswith("data.storage")]
    assert len(note) == 1 and note[0].startswith("data.storage auto: memory")


def test_training_on_disk_matches_memory(tiny_whisper, audio_folder, tmp_path):
    from safetensors.numpy import load_file

    from omnitune.core.api import train

    results = {}
    for storage in ("memory", "disk"):
        result = train(write_recipe(tmp_path / f"{storage}.yaml", {
            "name": "tiny", "task": "speech-recognition", "seed": 0,
            "model": {"name": str(tiny_whisper), "max_new_tokens": 3, "max_source_seconds": 2},
            "data": {"source": str(audio_folder), "storage": storage, "max_bad_share": 0.5, "val_size": 0.2,
                     "test_size": 0.2, "augment": [{"name": "noise", "prob": 0.5}]},
            "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "precision": "fp32", "log_every": 1, "threads": 1},
            "eval": {"baseline": False},
            "output": {"dir": str(tmp_path / "runs"), "run_name": storage}}))
        events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
        losses = [e["loss"] for e in events if e.get("event") == "train" and "loss" in e]
        weights = load_file(result.run_dir / "model" / "model.safetensors")
        results[storage] = (losses, weights, result.metrics["test"])
    (lm, wm, tm), (ld, wd, td) = results["memory"], results["disk"]
    assert len(lm) >= 6 and lm == ld
    assert wm.keys() == wd.keys() and all(np.array_equal(wm[k], wd[k]) for k in wm)
    assert tm == td
