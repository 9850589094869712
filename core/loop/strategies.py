"""Fine-tuning strategies as data on the model's ordered layer groups.

Everything here takes explicit arguments: the layer groups a task returns (input to output, the
last is the head), parameter names, numbers. Parameters are identified by identity, never by value.

- :func:`freeze_plan` says which groups/parameters train for a strategy;
- :func:`apply_trainable` sets ``requires_grad`` accordingly;
- :func:`param_groups` builds optimiser groups with an ``lr_scale`` each (layer-wise LR decay,
  head LR) and no weight decay on biases and norm parameters;
- :class:`GradualUnfreezer` unfreezes one more group from the top on a schedule, and its state
  is saved with the checkpoint so a resumed run continues where it stopped.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable

from torch import nn

from ..base.errors import OmnituneError
from ..base.task import LayerGroup

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def check_groups_cover(model: nn.Module, groups: list[LayerGroup]) -> None:
    """Every trainable-capable parameter belongs to exactly one group."""
    owner: dict[int, str] = {}
    for g in groups:
        for p in g.parameters():
            if id(p) in owner:
                raise ValueError(f"parameter is in layer groups {owner[id(p)]!r} and {g.name!r}")
            owner[id(p)] = g.name
    missing = [n for n, p in model.named_parameters() if id(p) not in owner]
    if missing:
        raise ValueError(f"layer groups miss {len(missing)} parameters, e.g. {missing[:3]}")


def frozen_parameter_ids(
    model: nn.Module,
    groups: list[LayerGroup],
    strategy: str,
    freeze_globs: Iterable[str] = (),
    freeze_layers: int = 0,
    unfrozen_from_top: int = 1,
) -> set[int]:
    """The ids of the parameters a strategy keeps frozen.

    full: none. partial: the first ``freeze_layers`` groups plus parameters whose name matches a
    glob. feature_extraction: all but the head. gradual: all but the top ``unfrozen_from_top``.
    """
    if strategy == "full":
        return set()
    if strategy == "feature_extraction":
        frozen_groups = groups[:-1]
    elif strategy == "gradual":
        frozen_groups = groups[: max(0, len(groups) - unfrozen_from_top)]
    elif strategy == "partial":
        if freeze_layers >= len(groups):
            raise OmnituneError(
                f"finetune.freeze_layers={freeze_layers} would freeze every layer group "
                f"(the model has {len(groups)}: {', '.join(g.name for g in groups)})"
            )
        frozen_groups = groups[:freeze_layers]
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    frozen = {id(p) for g in frozen_groups for p in g.parameters()}
    globs = list(freeze_globs)
    if globs:
        matched = set()
        for name, p in model.named_parameters():
            for glob in globs:
                if fnmatch.fnmatchcase(name, glob):
                    frozen.add(id(p))
                    matched.add(glob)
        unmatched = [g for g in globs if g not in matched]
        if unmatched:
            example = next(iter(n for n, _ in model.named_parameters()), "")
            raise OmnituneError(
                f"finetune.freeze: pattern(s) {unmatched} match no parameter name (names look like {example!r})"
            )
    return frozen


def apply_trainable(model: nn.Module, frozen_ids: set[int]) -> None:
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen_ids)


def frozen_norm_modules(groups: list[LayerGroup], frozen_ids: set[int]) -> list[nn.Module]:
    """Norm layers whose parameters are all frozen: their running statistics stay fixed too when
    ``freeze_norm_stats`` is set (they are put in eval mode after every ``model.train()``)."""
    out = []
    for g in groups:
        for module in g.modules:
            for m in module.modules():
                if isinstance(m, _NORM_TYPES):
                    params = list(m.parameters(recurse=False))
                    if all(id(p) in frozen_ids for p in params):
                        out.append(m)
    return out


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the probability of every dropout module; returns how many were changed."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = p
            count += 1
    return count


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and norm scales/shifts are rank 0/1; decaying them hurts and is not what AdamW papers do.
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(
    model: nn.Module,
    groups: list[LayerGroup],
    weight_decay: float,
    lr: float,
    layer_decay: float | None = None,
    head_lr: float | None = None,
    exclude_ids: set[int] = frozenset(),
) -> list[dict]:
    """Optimiser parameter groups: one per (layer group, decay / no decay), each with an lr_scale.

    Group i of n gets ``lr_scale = layer_decay ** (n - 1 - i)``; the head gets ``head_lr / lr``
    when head_lr is set. The scheduler multiplies each group's base LR by its lr_scale.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    n = len(groups)
    out = []
    for i, g in enumerate(groups):
        scale = layer_decay ** (n - 1 - i) if layer_decay else 1.0
        if i == n - 1 and head_lr is not None:
            scale = head_lr / lr
        decay, no_decay = [], []
        for p in g.parameters():
            if id(p) in exclude_ids:
                continue
            (no_decay if _no_decay(names.get(id(p), ""), p) else decay).append(p)
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, ".no_decay")):
            if params:
                out.append({"params": params, "weight_decay": wd, "lr_scale": scale, "name": g.name + suffix})
    return out


class GradualUnfreezer:
    """Start with the head trainable; every ``every`` epochs or steps unfreeze the next group down."""

    def __init__(self, model: nn.Module, groups: list[LayerGroup], every: int, unit: str) -> None:
        self.model, self.groups, self.every, self.unit = model, groups, every, unit
        self.unfrozen = 1

    def frozen_ids(self) -> set[int]:
        return frozen_parameter_ids(self.model, self.groups, "gradual", unfrozen_from_top=self.unfrozen)

    def maybe_unfreeze(self, count: int, unit: str) -> bool:
        """Called with the number of finished epochs (unit "epoch") or steps (unit "step")."""
        if unit != self.unit or count == 0 or count % self.every:
            return False
        target = min(len(self.groups), 1 + count // self.every)
        if target == self.unfrozen:
            return False
        self.unfrozen = target
        apply_trainable(self.model, self.frozen_ids())
        return True

    def state_dict(self) -> dict:
        return {"unfrozen": self.unfrozen}

    def load_state_dict(self, state: dict) -> None:
        self.unfrozen = int(state["unfrozen"])
        apply_trainable(self.model, self.frozen_ids())


def apply_strategy(
    model: nn.Module, groups: list[LayerGroup], *, strategy: str, freeze: Iterable[str] = (), freeze_layers: int = 0,
    unfreeze_every: int = 1, unfreeze_unit: str = "epoch", adapters: bool = False,
) -> tuple[set[int], GradualUnfreezer | None]:
    """Set ``requires_grad`` for a strategy; returns the ids of the parameters the optimiser
    leaves out, and the unfreezer of a gradual run.

    ``adapters``: PEFT already froze the base (what trains is the adapter and the head). Gradual
    unfreezing puts every parameter in the optimiser from the start (frozen ones get no gradient).
    """
    unfreezer = None
    if strategy == "gradual":
        unfreezer = GradualUnfreezer(model, groups, unfreeze_every, unfreeze_unit)
        frozen, excluded = unfreezer.frozen_ids(), set()
    elif adapters:
        frozen = {id(p) for p in model.parameters() if not p.requires_grad}
        excluded = frozen
    else:
        frozen = frozen_parameter_ids(model, groups, strategy, freeze, freeze_layers)
        excluded = frozen
    apply_trainable(model, frozen)
    return excluded, unfreezer


def enable_gradient_checkpointing(model: nn.Module) -> str:
    """Recompute activations in the backward pass instead of keeping them (``train.gradient_checkpointing``):
    transformers models through ``activation_checkpointing_enable`` (non-reentrant, so frozen
    embeddings under LoRA need no input-grad hook), timm models through ``set_grad_checkpointing``.
    Returns which mechanism was used; a model with neither is a one-line error."""
    inner = model
    while True:  # a PEFT wrapper delegates to the model it wraps
        if hasattr(inner, "activation_checkpointing_enable") and getattr(inner, "supports_gradient_checkpointing", True):
            # transformers 5 renamed gradient_checkpointing_enable (deprecated until v6).
            inner.activation_checkpointing_enable({"use_reentrant": False})
            if getattr(getattr(inner, "config", None), "use_cache", False):
                inner.config.use_cache = False  # a KV cache is useless (and refused) when recomputing
            return "transformers"
        if hasattr(inner, "set_grad_checkpointing"):
            inner.set_grad_checkpointing(True)
            return "timm"
        nxt = getattr(inner, "base_model", None) or getattr(inner, "model", None)
        if not isinstance(nxt, nn.Module) or nxt is inner:
            # A task's own wrapper (e.g. a VITS generator beside its discriminator): its children.
            found = {_enable_child(child) for child in inner.children()} - {None}
            if found:
                return found.pop() if len(found) == 1 else "+".join(sorted(found))
            raise OmnituneError(f"train.gradient_checkpointing: {type(model).__name__} supports neither "
                                "transformers' gradient_checkpointing_enable nor timm's set_grad_checkpointing")
        inner = nxt


def _enable_child(module: nn.Module) -> str | None:
    try:
        return enable_gradient_checkpointing(module)
    except OmnituneError:
        return None
