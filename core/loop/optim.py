"""Optimisers and LR schedules with explicit step counts.

The schedule sets every parameter group's LR as ``base_lr * lr_scale * factor(step)`` where
``factor`` is warmup followed by one decay shape, written once in :func:`lr_factor` (the shape of
nanoGPT's ``get_lr``). ``plateau`` is warmup + constant, multiplied down when the validation metric
stops improving.

Re-planning (``train.time_budget_minutes``). When the total changes from T_old to T_new after s
updates, the decay goes on from where it is: progress p(t) = p_s + (1 - p_s) * (t - s) / (T_new - s)
for t >= s, with p_s the progress at s under the old plan, so the LR at s is unchanged and the last
update's schedule value is still the end value. A re-plan during warmup leaves warmup as it is (its
step count was fixed from the first plan) and the decay runs from the end of warmup to T_new.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..base.errors import OmnituneError


def build_optimizer(
    groups: list[dict], name: str, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
    momentum: float = 0.9, nesterov: bool = False,
) -> torch.optim.Optimizer:
    for g in groups:
        g["base_lr"] = lr
        g["lr"] = lr * g["lr_scale"]
    if name == "adamw":
        # The fused kernel updates every parameter in one call. torch's default on a CPU is a Python
        # loop with a host sync per parameter: the largest cost left in a step (bench/profile_step.py).
        params = [p for g in groups for p in g["params"]]
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused,
                                 foreach=None if fused else True)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"unknown optimiser {name!r}")


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, kind: str, min_ratio: float = 0.0, power: float = 1.0
) -> float:
    """The LR multiplier before optimiser update number ``step`` (0-based).

    >>> lr_factor(0, 110, 10, "linear"), lr_factor(9, 110, 10, "linear"), lr_factor(60, 110, 10, "linear")
    (0.1, 1.0, 0.5)
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return decay_factor(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)), kind, min_ratio, power)


def decay_factor(progress: float, kind: str, min_ratio: float = 0.0, power: float = 1.0) -> float:
    """The LR multiplier after warmup at ``progress`` (0 at the end of warmup, 1 at the last step)."""
    if kind in ("constant", "plateau"):
        return 1.0
    if kind == "linear":
        shape = 1.0 - progress
    elif kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "polynomial":
        shape = (1.0 - progress) ** power
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    return min_ratio + (1.0 - min_ratio) * shape


class LRSchedule:
    """Sets group LRs from the update count; `step_metric` drives reduce-on-plateau; `replan` changes
    the total mid-run without a jump in the LR (see the module docstring)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int,
        min_ratio: float = 0.0, power: float = 1.0, plateau_factor: float = 0.5, plateau_patience: int = 1,
        mode: str = "max",
    ) -> None:
        self.optimizer = optimizer
        self.kind, self.total_steps, self.warmup_steps = kind, total_steps, warmup_steps
        self.min_ratio, self.power = min_ratio, power
        self.plateau_factor, self.plateau_patience, self.mode = plateau_factor, plateau_patience, mode
        self.plateau_scale = 1.0
        self._best: float | None = None
        self._bad = 0
        self._first_total = total_steps
        self.replans: list[list[int]] = []  # [step, new total] of each re-plan, in order (checkpointed)
        self._anchor = (warmup_steps, 0.0)  # (step, progress) the decay runs on from, to total_steps
        self.step_update(0)

    def progress(self, step: int) -> float:
        """How far the decay is before update ``step`` (0 at the end of warmup, 1 at the end)."""
        start, p = self._anchor
        return min(1.0, p + (1.0 - p) * (step - start) / max(1, self.total_steps - start))

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return decay_factor(self.progress(step), self.kind, self.min_ratio, self.power)

    def replan(self, step: int, total_steps: int) -> None:
        """Train ``total_steps`` in all, ``step`` updates being done: the decay continues from its
        progress at ``step`` to the end over the new horizon (warmup, if not over, is kept)."""
        if step > self.warmup_steps:
            self._anchor = (step, self.progress(step))
        self.total_steps = total_steps
        self.replans.append([step, total_steps])

    def step_update(self, num_updates: int) -> None:
        f = self.factor(num_updates) * self.plateau_scale
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * g["lr_scale"] * f

    def step_metric(self, value: float) -> bool:
        """Feed a validation metric; returns True when the LR was reduced."""
        if self.kind != "plateau":
            return False
        better = self._best is None or (value > self._best if self.mode == "max" else value < self._best)
        if better:
            self._best, self._bad = value, 0
            return False
        self._bad += 1
        if self._bad > self.plateau_patience:
            self.plateau_scale *= self.plateau_factor
            self._bad = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best": self._best, "bad": self._bad,
                "replans": [list(r) for r in self.replans]}

    def load_state_dict(self, state: dict) -> None:
        """Load ``state`` into a schedule built as the saved one was (same first total)."""
        self.plateau_scale, self._best, self._bad = state["plateau_scale"], state["best"], state["bad"]
        self.total_steps, self._anchor, self.replans = self._first_total, (self.warmup_steps, 0.0), []
        for step, total in state.get("replans", []):  # replayed: the same anchor, the same totals
            self.replan(int(step), int(total))


# ---- several optimisers, resumed state ------------------------------------------------------
def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimiser state the memory layout of its parameter. ``load_state_dict`` returns
    contiguous tensors; a channels-last parameter's moments must be channels-last too, since fused
    and foreach kernels walk parameter and state in memory order."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def split_optimizer(optimizer: torch.optim.Optimizer, parts: dict[str, list[nn.Parameter]]
                    ) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per part, of ``optimizer``'s kind and settings, each over the part's share of
    every parameter group (LR scales, weight decay kept). A part with nothing to train is left out."""
    owner: dict[int, str] = {}
    for name, params in parts.items():
        for p in params:
            if owner.setdefault(id(p), name) != name:
                raise OmnituneError(f"optimizer_parts: a parameter is in parts {owner[id(p)]!r} and {name!r}")
    stray = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in owner)
    if stray:
        raise OmnituneError(f"optimizer_parts: {stray} trained parameters are in no part")
    out = {}
    for name in parts:
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [p for p in g["params"] if owner[id(p)] == name]} for g in optimizer.param_groups]
        groups = [g for g in groups if g["params"]]
        if groups:  # each group already carries every hyper-parameter of the recipe's optimiser
            out[name] = type(optimizer)(groups)
            out[name].defaults = dict(optimizer.defaults)
    return out
