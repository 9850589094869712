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
from safetensors.torch import load_file, load_model, save_file, save_model

from .errors import OmnituneError

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
    path: Path, model: torch.nn.Module, trainer_state: dict[str, Any], extra: dict[str, Any] | None = None,
    names: set[str] | None = None,
) -> None:
    """Write model weights, a JSON trainer state and a torch file of everything else, atomically.

    ``names`` keeps only those state-dict entries (an adapter-only PEFT checkpoint: megabytes for a
    model of hundreds); None saves the whole model.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if names is None:
        save_model(model, str(tmp / MODEL_FILE))
    else:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k in names}
        save_file(state, str(tmp / MODEL_FILE), metadata={"omnitune": "adapter-only"})
    (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
    if extra:
        torch.save(extra, tmp / "state.pt")
    old = path.with_name(path.name + ".old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def load_checkpoint(
    path: Path, model: torch.nn.Module, names: set[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into ``model`` (only ``names``, for an adapter-only checkpoint, on top of the
    base weights already there); return (trainer_state, extra)."""
    path = Path(path)
    if names is None:
        load_model(model, str(path / MODEL_FILE), strict=True)
    else:
        weights = load_file(str(path / MODEL_FILE))
        if set(weights) != names:
            missing, unexpected = sorted(names - set(weights))[:3], sorted(set(weights) - names)[:3]
            raise OmnituneError(f"{path}: checkpoint does not match the adapter (missing {missing}, unexpected "
                                f"{unexpected}); was the recipe's finetune.peft changed?")
        model.load_state_dict(weights, strict=False)
    state = json.loads((path / STATE_FILE).read_text())
    extra_file = path / "state.pt"
    extra = torch.load(extra_file, weights_only=False) if extra_file.exists() else {}
    return state, extra
