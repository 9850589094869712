"""Exact resume (text) and checkpoints without pickle.

A run killed with SIGKILL and resumed with `omnitune train --resume` ends with the same weights
and metrics as an uninterrupted run, with DataLoader workers and dropout on. Checkpoint state
(optimiser, schedule, EMA, RNG) is stored as safetensors + JSON, and nothing is ever unpickled.
"""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_model

from omnitune.core.loop import checkpoint as ckpt
from omnitune.core.base.errors import OmnituneError

from ..conftest import text_recipe
from ..resume_check import full_and_killed_runs_agree


# ----------------------------------------------------------------------------- state without pickle
def _trained_adamw(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-2},
                             {"params": model[2].parameters(), "lr": 3e-3, "lr_scale": 0.5}], betas=(0.8, 0.99))
    for _ in range(3):
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_optimiser_and_rng_state_round_trip_without_pickle(tmp_path):
    model, opt = _trained_adamw()
    ema = {"decay": 0.9, "shadow": {k: v.clone() for k, v in model.state_dict().items()}}
    extra = {"optimizer": opt.state_dict(), "schedule": {"plateau_scale": 0.5, "best": None, "bad": 2},
             "rng": ckpt.rng_state(), "ema": ema}
    ckpt.save_checkpoint(tmp_path / "last", model, {"step": 3}, extra)
    files = sorted(p.name for p in (tmp_path / "last").iterdir())
    assert files == ["model.safetensors", "state.json", "state.safetensors", "trainer_state.json"]
    for f in (tmp_path / "last").iterdir():  # no pickle anywhere: every file is JSON or safetensors
        json.loads(f.read_text()) if f.suffix == ".json" else load_file(str(f))

    # Draws after the save, then restore: the same draws again, from all three generators.
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    fresh, fresh_opt = _trained_adamw(seed=1)
    state, loaded = ckpt.load_checkpoint(tmp_path / "last", fresh)
    assert state == {"step": 3}
    ckpt.set_rng_state(loaded["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws
    assert loaded["schedule"] == extra["schedule"] and loaded["ema"]["decay"] == 0.9
    for k, v in ema["shadow"].items():
        torch.testing.assert_close(loaded["ema"]["shadow"][k], v, rtol=0, atol=0)

    # The optimiser state (integer keys, tuples, extra group keys) loads and steps identically.
    fresh_opt.load_state_dict(loaded["optimizer"])
    assert fresh_opt.param_groups[1]["lr_scale"] == 0.5 and fresh_opt.param_groups[0]["betas"] == (0.8, 0.99)
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (fresh, fresh_opt)):
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tensors_go_back_to_their_device_or_stay_on_the_cpu(tmp_path):
    state = {"x": torch.arange(3.0, device="cuda" if torch.cuda.is_available() else "cpu")}
    ckpt.save_state(tmp_path, state)
    assert ckpt.read_state(tmp_path)["x"].device == state["x"].device
    # A checkpoint written on a GPU resumes on a machine without one.
    tree = json.loads((tmp_path / "state.json").read_text())
    tree["__dict__"][0][1]["device"] = "cuda:7"
    (tmp_path / "state.json").write_text(json.dumps(tree))
    loaded = ckpt.read_state(tmp_path)["x"]
    expected = "cuda:7" if torch.cuda.device_count() > 7 else "cpu"
    assert str(loaded.device) == expected and loaded.tolist() == [0.0, 1.0, 2.0]


def test_unstorable_state_is_an_error_at_save_time():
    with pytest.raises(TypeError, match=r"state\.optimizer\.bad.*object"):
        ckpt.encode_state({"optimizer": {"bad": object()}})


class _Payload:
    """Unpickling this runs code (it calls Path.touch on a sentinel file)."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.sentinel),)


def _checkpoint_folder(tmp_path):
    folder = tmp_path / "last"
    folder.mkdir()
    model = torch.nn.Linear(2, 2)
    save_model(model, str(folder / ckpt.MODEL_FILE))
    (folder / ckpt.STATE_FILE).write_text(json.dumps({"step": 1}))
    return folder, model


def test_a_pickled_state_file_is_never_loaded(tmp_path):
    folder, model = _checkpoint_folder(tmp_path)
    sentinel = tmp_path / "owned"
    # Written both ways an attacker might: a plain pickle and torch.save's zip (which holds one).
    (folder / "state.pt").write_bytes(pickle.dumps({"optimizer": _Payload(str(sentinel))}))
    with pytest.raises(OmnituneError, match="state.pt.*pickle"):
        ckpt.load_checkpoint(folder, model)
    torch.save({"optimizer": _Payload(str(sentinel))}, folder / "state.pt")
    with pytest.raises(OmnituneError, match="pickle"):
        ckpt.load_checkpoint(folder, model)
    assert not sentinel.exists()


def test_a_crafted_state_json_cannot_name_objects(tmp_path):
    folder, model = _checkpoint_folder(tmp_path)
    for tree in ({"__dict__": [["rng", {"__tensor__": "missing"}]]},
                 {"__dict__": [["x", {"__reduce__": ["os.system", ["true"]]}]]}):
        (folder / "state.json").write_text(json.dumps(tree))
        with pytest.raises(OmnituneError, match="checkpoint state"):
            ckpt.load_checkpoint(folder, model)


def test_a_kill_between_the_two_renames_is_recovered(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(tmp_path / "last", model, {"step": 1}, {"x": torch.ones(1)})
    ckpt.save_checkpoint(tmp_path / "next", model, {"step": 2}, {"x": torch.ones(1)})
    # What save_checkpoint leaves when killed after renaming `last` away, before renaming the new one in.
    (tmp_path / "last").rename(tmp_path / "last.old")
    (tmp_path / "next").rename(tmp_path / "last.tmp")
    state, extra = ckpt.load_checkpoint(tmp_path / "last", model)
    assert state == {"step": 2} and torch.equal(extra["x"], torch.ones(1))
    ckpt.save_checkpoint(tmp_path / "last", model, {"step": 3})  # the stale .old is no obstacle
    assert not (tmp_path / "last.old").exists() and ckpt.load_checkpoint(tmp_path / "last", model)[0]["step"] == 3


# ----------------------------------------------------------------------------- kill -9, then --resume
def test_text_run_killed_and_resumed_matches_uninterrupted(tmp_path, tiny_bert, reviews_csv):
    sections = {"regularization": {"dropout": 0.1},
                "train": {"epochs": 3, "eval_every": 2, "num_workers": 2, "threads": 1},
                "data": {"max_samples": 64}}  # 4 steps per epoch, a checkpoint every 2
    # In the second epoch; the folders left as by a kill in the middle of a checkpoint swap.
    killed = full_and_killed_runs_agree(text_recipe(tiny_bert, reviews_csv, tmp_path, **sections), tmp_path,
                                        kill_at=6, mid_swap=True)
    assert killed["epoch"] >= 1
