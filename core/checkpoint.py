"""Atomic checkpoints: model weights in safetensors, optimiser/scheduler/RNG/trainer state beside.

A checkpoint is a folder written under a temporary name and renamed into place, so an interrupted
write never leaves a half checkpoint where the last good one was.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path, model: torch.nn.Module, trainer_state: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    """Write model weights, a JSON trainer state and a torch file of everything else, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / MODEL_FILE))
    (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
    if extra:
        torch.save(extra, tmp / "state.pt")
    old = path.with_name(path.name + ".old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def load_checkpoint(path: Path, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into ``model``; return (trainer_state, extra)."""
    path = Path(path)
    load_model(model, str(path / MODEL_FILE), strict=True)
    state = json.loads((path / STATE_FILE).read_text())
    extra_file = path / "state.pt"
    extra = torch.load(extra_file, weights_only=False) if extra_file.exists() else {}
    return state, extra
