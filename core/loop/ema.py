"""Exponential moving average of the weights, evaluated (and saved) instead of the raw weights."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        # Float copies of every parameter and buffer (BatchNorm statistics are averaged too).
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module):
        """Temporarily load the averaged weights into ``model``."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict({k: v.to(raw[k].dtype) for k, v in self.shadow.items()}, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(raw, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.shadow = state["decay"], state["shadow"]
