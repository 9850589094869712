"""A recipe's ``train.loss`` in the loop's loss contract (a sum and its item count); the trainer
checks it on the first batch before any update (``check_user_loss``)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..base.errors import OmnituneError


def user_loss(loss_fn: Callable, out: dict[str, Any], batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """A recipe's ``train.loss``: ``loss_fn(outputs, batch)`` returns a scalar mean over the batch's
    samples, or ``(summed_loss, num_items)`` for a loss averaged over other items (tokens)."""
    value = loss_fn(out["outputs"], batch)
    if isinstance(value, tuple):
        return value[0], value[1]
    n = batch_size(batch)
    return value * n, n


def batch_size(batch: dict[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return v.shape[0]
        if isinstance(v, list):
            return len(v)
    raise OmnituneError("cannot tell the batch size: the batch holds no tensor or list")

