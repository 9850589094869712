"""What the loop reads of the recipe (:class:`LoopSettings`) and what it keeps in a checkpoint
(:class:`TrainerState`), with the precision rule and the interruption it raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..base.errors import OmnituneError, RecipeError
from ..loop.evaluate import default_eval_batch_size


class Interrupted(OmnituneError):
    """Training was stopped by Ctrl-C / SIGTERM (after saving a checkpoint, when checkpoints are on)."""

    def __init__(self, run_dir: Path, saved: bool = True) -> None:
        if saved:
            message = f"interrupted; checkpoint saved. Resume with: omnitune train --resume {run_dir}"
        else:
            message = ("interrupted; train.save_checkpoints is false, so nothing was kept to resume from: "
                       "this run cannot be resumed")
        super().__init__(message)
        self.run_dir, self.saved = run_dir, saved


@dataclass
class LoopSettings:
    """What the loop needs of the recipe's ``train`` section (see core/base/recipe.py for each field)."""

    epochs: int
    batch_size: int
    max_steps: int | None = None
    eval_batch_size: int | None = None
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    precision: str = "auto"
    eval_every: int | None = None
    log_every: int = 10
    group_by_length: bool = True
    num_workers: int = 0
    save_checkpoints: bool = True
    time_budget: float | None = None  # seconds of optimiser steps (TimeBudget)

    @property
    def eval_batch(self) -> int:
        return default_eval_batch_size(self.batch_size, self.eval_batch_size)


@dataclass
class TrainerState:
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches (of this process) of `epoch` consumed at the last update
    step: int = 0  # optimiser updates done
    samples_seen: int = 0  # over all processes
    train_seconds: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    finished: bool = False
    stop_reason: str = ""
    unfreezer: dict | None = None
    early_stopping: dict | None = None
    baseline: dict | None = None
    history: list[dict] = field(default_factory=list)
    planned_steps: int | None = None  # the steps the time budget planned last (kept on resume)
    # Time budget: each re-plan ({step, seconds_per_step, planned_steps}), and where the window of
    # the next speed measure starts ([step, train_seconds]), so a resume plans as the run would have.
    budget_history: list[dict] = field(default_factory=list)
    budget_window: list[float] | None = None


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 where the hardware has a fast bf16 path, else fp32 ("no")."""
    if precision == "fp32":
        return "no"
    if device.type == "cpu" and precision == "fp16":
        raise RecipeError("train.precision: fp16 needs a CUDA GPU; use bf16 or auto on a CPU")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
    return precision
