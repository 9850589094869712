"""The feature cache's extraction pads each batch to its own longest text, batching texts of similar
length together, and stores sequences without padding (core/loop/feature_cache.py, Ragged): the cached
per-sample values equal those of batches padded to model.max_length, the old extraction's layout."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnitune.core.api import build_task, seed_everything
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.loop.feature_cache import FeatureStore, Ragged, extract, extraction_batches

from ..fixtures import tiny_recipe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    raw = tiny_recipe("text-classification", tmp_path_factory.mktemp("fc"))
    raw["finetune"] = {"strategy": "feature_extraction"}
    task = build_task(validate_recipe(raw, where="test"))
    seed_everything(0)
    model = task.build_model().eval()
    return task, model, task.build_datasets().train


def _padded_to_max_length(task, model, samples, depth):
    """The reference: one batch padded to max_length, the whole model run unpatched."""
    batch = task.collate(samples)
    pad = task.model_cfg.max_length - batch["input_ids"].shape[1]
    ids = F.pad(batch["input_ids"], (0, pad), value=task.tokenizer.pad_token_id or 0)
    mask = F.pad(batch["attention_mask"], (0, pad))
    types = F.pad(batch["token_type_ids"], (0, pad)) if "token_type_ids" in batch else None
    base = model.base_model
    if depth == len(task.layer_groups(model)) - 1:
        return base(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state[:, 0], mask
    hidden = base.embeddings(input_ids=ids, token_type_ids=types)
    full = base._create_attention_masks(mask, None, hidden, None, None)[0]
    for layer in base.encoder.layer[:depth - 1]:
        hidden = layer(hidden, full)
    return hidden, mask


@pytest.mark.parametrize("depth", ["all-but-head", 2])
@torch.no_grad()
def test_dynamic_padding_gives_the_max_length_features(tiny, depth):
    task, model, train = tiny
    depth = len(task.layer_groups(model)) - 1 if depth == "all-but-head" else depth
    lengths = train.lengths()
    assert max(lengths) < task.model_cfg.max_length and min(lengths) < max(lengths)  # padding matters here
    store = extract(task, model, train, depth, batch_size=8, device=torch.device("cpu"))
    for start in range(0, len(train), 8):
        idx = list(range(start, min(start + 8, len(train))))
        want, mask = _padded_to_max_length(task, model, [train[i] for i in idx], depth)
        got = store.gather(idx)
        assert got["index"].tolist() == idx
        if "first_token" in got:
            torch.testing.assert_close(got["first_token"], want, rtol=1e-5, atol=1e-5)
            continue
        n = mask.sum(1)
        assert got["hidden"].shape[1] == int(n.max()) < task.model_cfg.max_length  # stored without padding
        assert got["attention_mask"].tolist() == mask[:, :int(n.max())].tolist()
        for j, length in enumerate(n.tolist()):
            torch.testing.assert_close(got["hidden"][j, :length], want[j, :length], rtol=1e-5, atol=1e-5)
            assert not got["hidden"][j, length:].any()  # zeros past the text


def test_extraction_batches_group_by_length_and_cover_every_sample(tiny):
    _, _, train = tiny
    lengths = np.asarray(train.lengths())
    batches = extraction_batches(len(lengths), 8, lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    widths = [max(lengths[b]) for b in batches]
    in_order = [max(lengths[i:i + 8]) for i in range(0, len(lengths), 8)]
    assert widths == sorted(widths) and sum(widths) < sum(in_order)  # less padding than dataset order
    assert extraction_batches(5, 2, None) == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("max_ram_bytes", [1 << 30, 0])
def test_ragged_rows_round_trip_in_ram_and_on_disk(max_ram_bytes):
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, 3, generator=gen) for n in (4, 1, 6, 2, 5)]

    def batch(ids):
        width = max(len(rows[i]) for i in ids)
        values = torch.stack([F.pad(rows[i], (0, 0, 0, width - len(rows[i])), value=7.0) for i in ids])
        return {"h": Ragged(values, torch.tensor([len(rows[i]) for i in ids])), "label": torch.tensor(ids)}

    store = FeatureStore(5, batch([1, 3]), max_ram_bytes=max_ram_bytes)
    store.write([1, 3], batch([1, 3]))
    store.write([0, 4, 2], batch([0, 4, 2]))
    store.finish()
    assert store.on_disk == (max_ram_bytes == 0)
    assert store.nbytes == 5 * 8 + sum(r.numel() for r in rows) * 4
    got = store.gather([2, 0, 1])
    assert got["label"].tolist() == [2, 0, 1] and got["h"].shape == (3, 6, 3)
    for j, i in enumerate([2, 0, 1]):
        n = len(rows[i])
        assert torch.equal(got["h"][j, :n], rows[i]) and not got["h"][j, n:].any()  # padding: zeros, not 7
    with pytest.raises(ValueError, match="same shapes"):
        store.write([0], {"h": Ragged(torch.zeros(1, 2, 4), torch.tensor([2])), "label": torch.tensor([0])})
    folder = store.folder
    del store, got
    gc.collect()
    assert folder is None or not folder.exists()
