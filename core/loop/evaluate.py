"""Evaluation for the loop and for ``omnitune eval``: a dataset's loss and the task's metrics,
sharded over the processes and gathered once per sample, leaving the global RNG as it was."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..base.task import MetricInputs


def default_eval_batch_size(batch_size: int, eval_batch_size: int | None) -> int:
    """One rule for training-time and ``omnitune eval`` evaluation: eval_batch_size, else 2 x batch."""
    return eval_batch_size or batch_size * 2


def gather_objects(items: list, world: int) -> list:
    """Every process's list, concatenated in rank order, on every process."""
    if world == 1:
        return list(items)
    import torch.distributed as dist

    parts: list[list] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


@torch.no_grad()
def evaluate_model(task: Any, model: nn.Module, dataset, batch_size: int, device: torch.device,
                   autocast: Callable = nullcontext, num_workers: int = 0,
                   extra_metrics: dict[str, Callable] | None = None) -> tuple[dict[str, float], list, list]:
    """Loss (summed over the task's items, divided by their count: independent of the batch size)
    and the task's metrics over ``dataset``, in dataset order; leaves the global RNG as it was.

    Under several processes each takes every n-th sample; predictions are gathered so that each
    sample counts exactly once, uneven tails included, and every process gets the same metrics.
    """
    from accelerate.utils import send_to_device

    world, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    model.eval()
    mine = list(range(rank, len(dataset), world))
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=task.collate, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    loss_sum, items, records = 0.0, 0.0, []
    with torch.random.fork_rng(devices=[]):
        for indices, batch in zip(batches, loader):
            batch = send_to_device(batch, device)
            with autocast():
                out = task.forward(model, batch, train=False)
            p, r = task.predict_batch(model, batch, out)
            loss_sum += float(out["loss_sum"])
            items += float(out["num_items"])
            records.extend(zip(indices, p, r))
    if world > 1:
        totals = torch.tensor([loss_sum, items], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        loss_sum, items = float(totals[0]), float(totals[1])
        records = sorted(gather_objects(records, world), key=lambda rec: rec[0])
    preds, refs = [p for _, p, _ in records], [r for _, _, r in records]
    metrics = dict(task.compute_metrics(preds, refs))
    for name, fn in (extra_metrics or {}).items():
        value = fn(*metric_inputs(task, preds, refs))
        metrics.update(value if isinstance(value, dict) else {name: float(value)})
    metrics["loss"] = loss_sum / max(items, 1e-12)
    return metrics, preds, refs


def metric_inputs(task: Any, predictions: list, references: list) -> tuple[list, list]:
    """Predictions and references as plain values for a user's metric (a :class:`MetricInputs`
    task converts them; otherwise as ``predict_batch`` returned them)."""
    if isinstance(task, MetricInputs):
        return task.metric_inputs(predictions, references)
    return predictions, references


def mean_loss(out: dict[str, Any]) -> torch.Tensor:
    """A forward's loss as a mean over its items (for tests and benchmarks that step by hand)."""
    return out["loss_sum"] / max(float(out["num_items"]), 1.0)
