"""Frozen-trunk feature cache (core/loop/feature_cache.py): a cached run trains the same weights as an
uncached one, caches only when nothing random happens below the trained groups (or when told to,
saying what it turned off), and large caches go to a memory-mapped file that is deleted after."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

import omnitune
from omnitune.core.api import build_task, seed_everything
from omnitune.core.loop.feature_cache import CachedFeatures, FeatureCacheTask, FeatureStore, frozen_depth
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.base.task import LayerGroup

from ..fixtures import tiny_recipe


def _vision(folder: Path, **finetune) -> dict:
    raw = tiny_recipe("image-classification", folder)
    raw["model"].update(name="test_efficientnet", drop_rate=0.3)  # head dropout: the RNG must line up
    raw["data"]["augment"] = {"train": "none"}
    raw["finetune"] = {"strategy": "feature_extraction", "freeze_norm_stats": True, **finetune}
    raw["train"].update(epochs=2, save_checkpoints=False)
    return raw


def _text(folder: Path, **finetune) -> dict:
    raw = tiny_recipe("text-classification", folder)
    raw["finetune"] = {"strategy": "feature_extraction", **finetune}
    raw["train"].update(epochs=2, save_checkpoints=False)
    return raw


def _run(raw: dict, name: str, cache) -> tuple[dict, dict[str, torch.Tensor]]:
    raw = {**raw, "train": {**raw["train"], "cache_features": cache}, "output": {**raw["output"], "run_name": name}}
    result = omnitune.train(validate_recipe(raw, where="test"))
    task = build_task(validate_recipe(raw, where="test"))
    model = task.load_pretrained(result.run_dir / "model")
    return result.metrics, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _speech(folder: Path) -> dict:
    raw = tiny_recipe("speech-recognition", folder)
    raw["finetune"] = {"strategy": "partial", "freeze": ["model.encoder.*"]}  # the frozen-encoder recipe's split
    raw["train"].update(epochs=2, save_checkpoints=False)
    return raw


CASES = {
    "vision-linear-probe": lambda d: _vision(d),
    "vision-partial-lower-stages": lambda d: _vision(d, strategy="partial", freeze_layers=3),
    "text-feature-extraction": lambda d: _text(d),
    "text-partial-bottom-block": lambda d: _text(d, strategy="partial", freeze_layers=2),  # embeddings, block 0
    "speech-frozen-encoder": lambda d: _speech(d),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cached_run_trains_the_same_weights(tmp_path, case):
    raw = CASES[case](tmp_path)
    plain_metrics, plain = _run(raw, "plain", False)
    cached_metrics, cached = _run(raw, "cached", "auto")
    assert plain_metrics["feature_cache"]["enabled"] is False
    note = cached_metrics["feature_cache"]
    assert note["enabled"] is True, note
    assert note["turned_off"] == []
    assert note["storage"] == "memory"
    for name, value in plain.items():
        torch.testing.assert_close(cached[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert plain_metrics["steps"] == cached_metrics["steps"] > 0
    main = "wer" if case.startswith("speech") else "accuracy"
    for split in ("validation", "test"):
        assert cached_metrics[split][main] == plain_metrics[split][main]
        assert cached_metrics[split]["loss"] == pytest.approx(plain_metrics[split]["loss"], rel=1e-4, abs=1e-6)
    # Equal weights are not two untouched models: training moved some from their initial values.
    seed_everything(raw["seed"])
    init = build_task(validate_recipe(raw, where="test")).build_model().state_dict()
    moved = [k for k in plain if k in init and plain[k].is_floating_point() and not torch.allclose(plain[k], init[k])]
    assert moved


def test_auto_does_not_cache_through_randomness_and_true_turns_it_off(tmp_path):
    raw = _vision(tmp_path)
    raw["data"]["augment"] = {"train": "light"}
    raw["train"]["epochs"] = 1
    auto, _ = _run(raw, "auto", "auto")
    assert auto["feature_cache"]["enabled"] is False
    assert "train-time augmentation" in auto["feature_cache"]["reason"]
    forced, _ = _run(raw, "forced", True)
    assert forced["feature_cache"]["enabled"] is True
    assert any("augmentation" in t for t in forced["feature_cache"]["turned_off"])
    report = (Path(raw["output"]["dir"]) / "forced" / "report.md").read_text()
    assert "turned off: train-time augmentation (data.augment.train: 'light')" in report

    text = _text(tmp_path / "text")
    text["regularization"] = {"dropout": 0.1}
    text["train"]["epochs"] = 1
    auto, _ = _run(text, "text-auto", "auto")
    assert "dropout (p=0.1) in the frozen layers" in auto["feature_cache"]["reason"]
    full = _text(tmp_path / "text")
    full["finetune"] = {"strategy": "full"}
    full["train"]["epochs"] = 1
    assert _run(full, "text-full", True)[0]["feature_cache"]["enabled"] is False


def test_frozen_depth_counts_the_frozen_bottom_only():
    layers = [torch.nn.Linear(2, 2) for _ in range(4)]
    groups = [LayerGroup(f"g{i}", [m]) for i, m in enumerate(layers)]
    for m in layers[:2]:
        m.requires_grad_(False)
    layers[3].requires_grad_(False)  # frozen above a trained group: not part of the trunk
    assert frozen_depth(groups) == 2
    for m in layers:
        m.requires_grad_(False)
    assert frozen_depth(groups) == 3  # the head never counts


def test_large_cache_is_memory_mapped_and_deleted_with_the_store(tmp_path):
    feats = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    store = FeatureStore(6, {"features": feats[:4], "labels": labels[:4]}, max_ram_bytes=0)
    assert store.on_disk and store.nbytes == 6 * (4 * 4 + 8)
    store.write(0, {"features": feats[:4], "labels": labels[:4]})
    store.write(4, {"features": feats[4:], "labels": labels[4:]})
    assert isinstance(store.arrays["features"], np.memmap)
    task = FeatureCacheTask(object(), depth=1)
    batch = task.collate([CachedFeatures(store)[i] for i in (5, 0, 3)])
    assert batch["features"].tolist() == [[20, 21, 22, 23], [0, 1, 2, 3], [12, 13, 14, 15]]
    assert batch["labels"].tolist() == [2, 0, 0] and batch["cached_features"] is True
    folder = store.folder
    assert (folder / "features.npy").is_file()
    with pytest.raises(ValueError, match="same shapes"):
        store.write(0, {"features": torch.zeros(2, 5), "labels": labels[:2]})
    del store, task, batch
    gc.collect()
    assert not folder.exists()
