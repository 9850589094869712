"""The loop's small hooks, each with explicit arguments: early stopping, the training-loss log and
checkpoints."""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from ..base.errors import RecipeError
from ..loop import checkpoint as ckpt
from ..loop.tracking import RunLog


def better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class EarlyStopping:
    """Stop after ``patience`` evaluations without an improvement of ``metric`` by ``min_delta``."""

    def __init__(self, metric: str, mode: str, patience: int, min_delta: float = 0.0) -> None:
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.bad = 0

    def update(self, metrics: dict[str, float], task_name: str) -> bool:
        """Record one evaluation; True when training should stop."""
        if self.metric not in metrics:
            raise RecipeError(f"early_stopping.metric: {self.metric!r} is not a metric of task {task_name} "
                              f"(known: {', '.join(sorted(metrics))})")
        if better(metrics[self.metric], self.best, self.mode, self.min_delta):
            self.best, self.bad = metrics[self.metric], 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = state["best"], state["bad"]


class TrainLog:
    """Averages the training loss over a window of steps and writes it every ``every`` steps."""

    def __init__(self, log: RunLog, every: int) -> None:
        self.log, self.every = log, every
        self._reset()

    def _reset(self) -> None:
        self.loss_sum, self.items, self.samples, self.t0 = 0.0, 0.0, 0, time.perf_counter()

    def add(self, loss_sum: float, items: float, samples: int) -> None:
        self.loss_sum, self.items, self.samples = self.loss_sum + loss_sum, self.items + items, self.samples + samples

    def maybe_write(self, step: int, epoch: int, lr: float, last: bool) -> dict | None:
        if step % self.every and not last:
            return None
        elapsed = time.perf_counter() - self.t0
        logged = {"loss": self.loss_sum / max(self.items, 1e-12), "lr": lr,
                  "samples_per_s": self.samples / max(elapsed, 1e-9), "epoch": epoch}
        self.log.event("train", step=step, **logged)
        self.log.scalars("train", logged, step)
        self._reset()
        return logged


class Checkpointer:
    """Atomic checkpoints in ``folder``; only the main process writes, every process may read."""

    def __init__(self, folder: Path, enabled: bool, is_main: bool, adapter_names: set[str] | None) -> None:
        self.folder, self.enabled, self.is_main, self.adapter_names = Path(folder), enabled, is_main, adapter_names

    def save(self, name: str, model: nn.Module, state: dict, extra: dict | None) -> bool:
        """Write checkpoint ``name`` ("last" is skipped when checkpoints are off; "best" always is
        written, since the final evaluation loads it). Returns whether it was written."""
        if name != "best" and not self.enabled:
            return False
        if self.is_main:
            ckpt.save_checkpoint(self.folder / name, model, state, extra, names=self.adapter_names)
        return True

    def load(self, name: str, model: nn.Module) -> tuple[dict, dict]:
        return ckpt.load_checkpoint(self.folder / name, model, names=self.adapter_names)

    def exists(self, name: str) -> bool:
        return (self.folder / name).is_dir()

