"""Atomic checkpoints: model weights in safetensors, optimiser/scheduler/RNG/trainer state beside.

A checkpoint is a folder written under a temporary name and renamed into place, so an interrupted
write never leaves a half checkpoint where the last good one was.

Nothing in a checkpoint is a pickle, so resuming a run folder from someone else cannot run code:
the weights are ``model.safetensors``, the trainer state is ``trainer_state.json``, and the rest
(optimiser, schedule, EMA, RNG states) is split by :func:`encode_state` into its tensors
(``state.safetensors``) and a JSON tree that refers to them (``state.json``).

>>> tree, tensors = encode_state({"step": torch.tensor(3.0), "betas": (0.9, 0.999), 0: [None]})
>>> tree
{'__dict__': [['step', {'__tensor__': 't0', 'device': 'cpu'}], ['betas', {'__tuple__': [0.9, 0.999]}], [0, [None]]]}
>>> decode_state(tree, tensors)
{'step': tensor(3.), 'betas': (0.9, 0.999), 0: [None]}
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

from ..base.errors import OmnituneError

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"
EXTRA_TENSORS = "state.safetensors"
EXTRA_TREE = "state.json"
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__")


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


# ----------------------------------------------------------------------------- pickle-free state
def encode_state(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """A nested state (dicts, lists, tuples, tensors, numpy arrays, numbers, strings, None) -> a
    JSON-able tree and the tensors it refers to by name. Anything else is an error that names
    where it was, at save time rather than at resume time."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any, where: str) -> Any:
        if isinstance(x, torch.Tensor):
            name = f"t{len(tensors)}"
            # A copy of its own: safetensors refuses tensors that share storage (views).
            tensors[name] = x.detach().to("cpu", copy=True).contiguous()
            return {"__tensor__": name, "device": str(x.device)}
        if isinstance(x, np.ndarray):  # numpy's RNG state: 624 words, small enough for JSON
            return {"__ndarray__": x.tolist(), "dtype": str(x.dtype)}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            # JSON keys are strings only; an optimiser's state is keyed by parameter number, and
            # a plain string-keyed mapping could not be told from a marker. Keys keep their type.
            return {"__dict__": [[enc(k, where), enc(v, f"{where}.{k}")] for k, v in x.items()]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"checkpoint state{where}: cannot store a {type(x).__name__} without pickle")

    return enc(obj, ""), tensors


def decode_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode_state`; tensors go back to the device they were saved from
    when it exists here (as ``torch.load`` would), else stay on the CPU."""

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        marker = [k for k in _MARKERS if k in x]
        if len(marker) != 1:
            raise OmnituneError(f"checkpoint state: unexpected entry {str(x)[:80]}")
        if marker[0] == "__tensor__":
            t = tensors[x["__tensor__"]]
            device = torch.device(x.get("device", "cpu"))
            return t.to(device) if device.type == "cpu" or _device_available(device) else t
        if marker[0] == "__ndarray__":
            return np.asarray(x["__ndarray__"], dtype=np.dtype(x["dtype"]))
        if marker[0] == "__tuple__":
            return tuple(dec(v) for v in x["__tuple__"])
        return {_hashable(dec(k)): dec(v) for k, v in x["__dict__"]}

    return dec(tree)


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict)):
        raise OmnituneError(f"checkpoint state: a mapping key cannot be {type(key).__name__}")
    return key


def _device_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    return device.type == "meta" or (device.type == "mps" and torch.backends.mps.is_available())


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as ``state.safetensors`` + ``state.json`` into ``folder``."""
    tree, tensors = encode_state(state)
    save_file(tensors, str(Path(folder) / EXTRA_TENSORS), metadata={"omnitune": "checkpoint state"})
    (Path(folder) / EXTRA_TREE).write_text(json.dumps(tree))


def read_state(folder: Path) -> dict[str, Any]:
    """The optimiser/schedule/EMA/RNG state of a checkpoint folder; {} when it has none.

    Only safetensors and JSON are read: a ``state.pt`` (a pickle, as older versions wrote) is
    never loaded, since unpickling a file from someone else can run code."""
    folder = Path(folder)
    if not (folder / EXTRA_TREE).is_file():
        if (folder / "state.pt").exists():
            raise OmnituneError(f"{folder}: this checkpoint keeps its optimiser/RNG state in state.pt, a pickle, "
                                "which omnitune no longer loads (unpickling can run code). Resume it with the "
                                "omnitune version that wrote it, or start the run again.")
        return {}
    tensors = load_file(str(folder / EXTRA_TENSORS)) if (folder / EXTRA_TENSORS).is_file() else {}
    try:
        tree = json.loads((folder / EXTRA_TREE).read_text())
        return decode_state(tree, tensors)
    except (ValueError, KeyError, TypeError) as exc:
        raise OmnituneError(f"{folder / EXTRA_TREE}: unreadable checkpoint state ({exc})") from None


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    path: Path, model: torch.nn.Module, trainer_state: dict[str, Any], extra: dict[str, Any] | None = None,
    names: set[str] | None = None,
) -> None:
    """Write model weights, a JSON trainer state and (``extra``) the optimiser/RNG/... state, atomically.

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
        save_state(tmp, extra)
    old = path.with_name(path.name + ".old")
    if old.exists():  # left by a kill during the clean-up below
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)  # a kill between these two renames is undone by recover_checkpoint
    if old.exists():
        shutil.rmtree(old)


def recover_checkpoint(path: Path) -> None:
    """Finish a checkpoint swap that a hard kill (kill -9, power loss) interrupted.

    :func:`save_checkpoint` renames the current folder to ``.old`` and then the complete ``.tmp``
    into place; a kill between the two leaves no ``path``. The ``.tmp`` is then complete (it is
    renamed only once written), so it becomes the checkpoint; without one, ``.old`` is put back."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if not path.exists() and old.is_dir():
        try:
            os.replace(tmp if tmp.is_dir() else old, path)
        except OSError:  # another process of the same run recovered it first
            if not path.is_dir():
                raise


def load_checkpoint(
    path: Path, model: torch.nn.Module, names: set[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into ``model`` (only ``names``, for an adapter-only checkpoint, on top of the
    base weights already there); return (trainer_state, extra)."""
    path = Path(path)
    recover_checkpoint(path)
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
    return state, read_state(path)
