"""One training loop for every domain and every process count, on Hugging Face Accelerate.

Accelerate wraps only devices, precision and the process group; the loop itself reads top to
bottom in :meth:`Trainer.fit`: for each epoch, for each optimiser step: forward and backward over
the step's micro-batches, normalise, clip, update, schedule, then the small hooks in order (EMA,
unfreezing, logging, evaluation, checkpoints, early stopping).

Losses. A task's ``forward`` returns ``loss_sum`` (summed over what it averages: samples, or tokens
for token-level tasks) and ``num_items``. The loop back-propagates the sums and, once the step's
micro-batches are done, divides the gradients by the item count of the whole effective batch,
summed over micro-batches and over processes. So 2 micro-batches x 4 equal one batch of 8, and 2
processes x 4 equal one process x 8, whatever the number of tokens in each micro-batch.

Processes. Under ``torchrun`` / ``accelerate launch`` every process runs this loop on its own
shard of each step's batches (process r takes every n-th micro-batch of the global order); only
the main process writes files; evaluation is sharded and gathered once per sample.

Resume. Batch order is a function of (seed, epoch); checkpoints hold the position in the epoch,
every process's RNG state taken right after the last optimiser update, the optimiser, schedule,
EMA, unfreezing and early-stopping state. Evaluation never consumes the global RNG.

Several optimisers. A task with ``optimizer_parts(model)`` (e.g. a GAN's discriminator and
generator) gets one optimiser per part, each a copy of the recipe's optimiser over the part's share
of the parameter groups, with its own schedule. One optimiser step then runs the parts in order over
the step's micro-batches (``task.forward(..., part=name)``), each followed by its own normalise,
clip and update; checkpoints hold every part's optimiser and schedule.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..loop import checkpoint as ckpt
from ..base.data import BatchOrder
from ..loop.ema import EMA
from ..base.errors import OmnituneError, RecipeError, TrainingDiverged
from ..loop.strategies import GradualUnfreezer, frozen_norm_modules
from ..base.task import DataBundle, LayerGroup
from ..loop.tracking import RunLog


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
    """What the loop needs of the recipe's ``train`` section (see core/recipe.py for each field)."""

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


def default_eval_batch_size(batch_size: int, eval_batch_size: int | None) -> int:
    """One rule for training-time and ``omnitune eval`` evaluation: eval_batch_size, else 2 x batch."""
    return eval_batch_size or batch_size * 2


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
    planned_steps: int | None = None  # the steps a time budget chose (kept on resume)


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


def better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


# ---------------------------------------------------------------------------------------- hooks
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


class TimeBudget:
    """``train.time_budget_minutes``: once, after a representative stretch of steps, the number of
    steps that fits in ``seconds`` of training at the speed seen. The stretch is one length group of
    the sampler (``measure_steps``, its longest batches come first) or a quarter of a shorter plan;
    the first step (warm-up: allocation, kernel selection) is left out of the speed."""

    def __init__(self, seconds: float, measure_steps: int = 50) -> None:
        self.seconds, self.measure_steps = seconds, measure_steps
        self.first_step_seconds: float | None = None
        self.per_step: float | None = None  # the speed the decision used

    def measure_at(self, planned: int) -> int:
        return max(2, min(self.measure_steps, planned // 4))

    def steps(self, done: int, seconds_so_far: float, planned: int) -> int | None:
        """None when the plan fits (or it is not the step to decide)."""
        if done != self.measure_at(planned) or done >= planned:
            return None
        if self.first_step_seconds is not None:
            per_step = (seconds_so_far - self.first_step_seconds) / (done - 1)
        else:  # resumed between the first step and this one
            per_step = seconds_so_far / done
        self.per_step = per_step
        affordable = int(self.seconds / per_step) if per_step > 0 else planned
        return max(affordable, done + 1) if affordable < planned else None


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


# ---------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains ``model`` (strategy already applied: what trains has ``requires_grad``) for ``task``.

    Everything is an explicit argument: the optimiser over the trainable parameters, a schedule
    factory ``make_schedule(optimizer, total_steps)`` (the step count depends on the process count),
    the loop settings, the selection metric and its direction, and the optional hooks.
    """

    def __init__(
        self, task: Any, model: nn.Module, bundle: DataBundle, run_dir: Path, *, seed: int,
        optimizer: torch.optim.Optimizer, make_schedule: Callable, loop: LoopSettings, groups: list[LayerGroup],
        select_metric: str, select_mode: str, early_stopping: EarlyStopping | None = None,
        ema_decay: float | None = None, unfreezer: GradualUnfreezer | None = None, freeze_norm_stats: bool = False,
        l1: float = 0.0, adapter_names: set[str] | None = None, baseline: bool = False,
        loss_fn: Callable | None = None, extra_metrics: dict[str, Callable] | None = None,
        callbacks: list[Callable[["Trainer"], None]] = (),
    ) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.task, self.bundle, self.run_dir, self.seed, self.cfg = task, bundle, Path(run_dir), seed, loop
        self.groups, self.select_metric, self.select_mode = groups, select_metric, select_mode
        self.early_stopping, self.unfreezer, self.freeze_norm_stats = early_stopping, unfreezer, freeze_norm_stats
        self.l1, self.baseline, self.loss_fn = l1, baseline, loss_fn
        self.extra_metrics = dict(extra_metrics or {})
        self.callbacks = list(callbacks)
        self.state = TrainerState()
        self._stop_requested = False

        use_cpu = not torch.cuda.is_available()
        self.precision = resolve_precision(loop.precision, torch.device("cpu" if use_cpu else "cuda"))
        # Accelerate keeps the precision in process-wide state; several runs in one process (the
        # API, search, cross-validation) may each pick their own, so clear it first. The
        # distributed set-up (PartialState) is kept.
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=use_cpu)
        self.is_main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        if unfreezer is not None and self.world > 1:
            # DDP fixes the set of synchronised parameters when it wraps the model.
            raise RecipeError("finetune.strategy 'gradual' runs in one process only (DDP cannot add "
                              "parameters to its gradient synchronisation mid-run)")
        self.log = RunLog(self.run_dir, enabled=self.is_main)
        self.train_log = TrainLog(self.log, loop.log_every)
        self.checkpoints = Checkpointer(self.run_dir / "checkpoints", loop.save_checkpoints, self.is_main,
                                        adapter_names)
        parts = task.optimizer_parts(model) if hasattr(task, "optimizer_parts") else None
        if parts and self.world > 1:
            raise RecipeError(f"task {task.name}: several optimisers ({', '.join(parts)}) run in one process only")
        optimizers = split_optimizer(optimizer, parts) if parts else {None: optimizer}
        self.model, *prepared = self.accelerator.prepare(model, *optimizers.values())
        # Part name (None for a task without parts) -> optimiser; the last one is the main one (its
        # LR is logged, its loss is the step's loss).
        self.optimizers = dict(zip(optimizers, prepared))
        self.optimizer = prepared[-1]
        self.ema = EMA(self._unwrapped, ema_decay) if ema_decay else None

        # --- data order and step counts. Length groups span the global effective batch, so N
        # processes x batch B see the same samples per step as one process x N*B.
        global_batch = loop.batch_size * loop.grad_accum * self.world
        lengths = bundle.train_lengths if loop.group_by_length else None
        self.order = BatchOrder(len(bundle.train), loop.batch_size, seed, lengths, group_size=global_batch * 50)
        self.micro_per_epoch = len(self.order.batches(0)) // self.world
        if self.micro_per_epoch == 0:
            raise OmnituneError(
                f"the training set ({len(bundle.train)} samples) is smaller than one batch per process")
        self.updates_per_epoch = math.ceil(self.micro_per_epoch / loop.grad_accum)
        self.total_steps = loop.epochs * self.updates_per_epoch
        if loop.max_steps:
            self.total_steps = min(self.total_steps, loop.max_steps)
        self.schedules = {name: make_schedule(opt, self.total_steps) for name, opt in self.optimizers.items()}
        self.schedule = list(self.schedules.values())[-1]
        self.budget = TimeBudget(loop.time_budget) if loop.time_budget else None

    # ------------------------------------------------------------------ helpers
    @property
    def _unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and stop after the current step (what SIGTERM does)."""
        self._stop_requested = True

    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop; all processes stop at the same step."""
        if self.world == 1:
            return self._stop_requested
        flag = torch.tensor([float(self._stop_requested)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item() > 0)

    def _train_mode(self) -> None:
        self.model.train()
        if self.freeze_norm_stats:
            frozen = {id(p) for p in self.model.parameters() if not p.requires_grad}
            for m in frozen_norm_modules(self.groups, frozen):
                m.eval()

    def _batches(self, epoch: int) -> list[list[int]]:
        batches = self.order.batches(epoch)
        return batches[self.accelerator.process_index::self.world][: self.micro_per_epoch]

    def _loader(self, batch_sampler: list[list[int]], epoch: int) -> DataLoader:
        dataset = self.bundle.train
        if hasattr(dataset, "set_epoch"):  # augmentation drawn from (seed, epoch, index)
            dataset.set_epoch(epoch)
        # An explicit generator: worker seeds then do not consume (or depend on) the global RNG.
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=self.task.collate,
                          num_workers=self.cfg.num_workers, generator=generator, persistent_workers=False)

    def _forward(self, batch: dict[str, Any], train: bool, part: str | None = None) -> dict[str, Any]:
        kw = {} if part is None else {"part": part}
        out = self.task.forward(self.model if train else self._unwrapped, batch, train=train, **kw)
        if self.loss_fn is not None and train:
            out["loss_sum"], out["num_items"] = user_loss(self.loss_fn, out, batch)
        return out

    def _diverged(self, loss: torch.Tensor) -> TrainingDiverged:
        s = self.state
        return TrainingDiverged(f"loss is {loss.item()} at step {s.step} (epoch {s.epoch}); stopped. The last good "
                                f"checkpoint is kept in {self.checkpoints.folder}. Try a lower train.lr or "
                                f"train.precision=fp32")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, dataset) -> tuple[dict[str, float], list, list]:
        """Loss and metrics on a dataset, sharded over the processes; RNG-neutral."""
        was_training = self.model.training
        model = self._unwrapped
        with self.ema.swapped_in(model) if self.ema else nullcontext():
            result = evaluate_model(self.task, model, dataset, self.cfg.eval_batch, self.accelerator.device,
                                    self.accelerator.autocast, self.cfg.num_workers, self.extra_metrics)
        if was_training:
            self._train_mode()
        return result

    def _validate(self) -> bool:
        """Evaluate on validation; update the best checkpoint, the plateau schedule and early
        stopping. Returns True when early stopping says stop."""
        s = self.state
        metrics = self.evaluate(self.bundle.validation)[0]
        if self.select_metric not in metrics:
            raise RecipeError(f"eval.metric: {self.select_metric!r} is not a metric of task "
                              f"{self.task.name} (known: {', '.join(sorted(metrics))})")
        s.history.append({"step": s.step, "epoch": s.epoch, **{f"val_{k}": v for k, v in metrics.items()}})
        self.log.event("eval", step=s.step, epoch=s.epoch, split="validation", **metrics)
        self.log.scalars("validation", metrics, s.step)
        value = metrics[self.select_metric]
        if better(value, s.best_metric, self.select_mode):
            s.best_metric, s.best_step = value, s.step
            self._save("best")
        for schedule in self.schedules.values():
            schedule.step_metric(value)
        return self.early_stopping is not None and self.early_stopping.update(metrics, self.task.name)

    # ------------------------------------------------------------------ checkpoints
    def _save(self, name: str, rng: dict | None = None) -> bool:
        """Checkpoint ``name``: "last" holds everything a resume needs, "best" the weights only."""
        s = self.state
        s.unfreezer = self.unfreezer.state_dict() if self.unfreezer else None
        s.early_stopping = self.early_stopping.state_dict() if self.early_stopping else None
        full = name != "best"
        extra = None
        if full:
            # Every process's RNG state (dropout masks differ per process), gathered to the main one.
            rngs = gather_objects([rng or ckpt.rng_state()], self.world)
            extra = {**self._optimizer_states(), "rng": rngs, "ema": self.ema.state_dict() if self.ema else None}
        model = self._unwrapped
        with self.ema.swapped_in(model) if (self.ema and not full) else nullcontext():
            saved = self.checkpoints.save(name, model, asdict(s), extra)
        self.accelerator.wait_for_everyone()
        return saved

    def _resume(self) -> None:
        state, extra = self.checkpoints.load("last", self._unwrapped)
        self.state = TrainerState(**state)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(extra["optimizer"] if name is None else extra["optimizer"][name])
            match_param_layout(opt)
            self.schedules[name].load_state_dict(extra["schedule"] if name is None else extra["schedule"][name])
        if self.ema and extra.get("ema"):
            self.ema.load_state_dict(extra["ema"])
        if self.unfreezer and self.state.unfreezer:
            self.unfreezer.load_state_dict(self.state.unfreezer)
        if self.early_stopping and self.state.early_stopping:
            self.early_stopping.load_state_dict(self.state.early_stopping)
        rngs = extra["rng"]
        rank = self.accelerator.process_index
        ckpt.set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
        if self.state.planned_steps:
            self._replan(self.state.planned_steps)
        for schedule in self.schedules.values():
            schedule.step_update(self.state.step)
        self.log.event("resume", step=self.state.step, epoch=self.state.epoch)

    def _replan(self, steps: int) -> None:
        """Train ``steps`` optimiser steps in all: the schedules decay over them instead."""
        self.total_steps = self.state.planned_steps = steps
        for schedule in self.schedules.values():
            if hasattr(schedule, "total_steps"):
                schedule.total_steps = steps

    def _check_budget(self, bar) -> None:
        s = self.state
        seconds = torch.tensor([s.train_seconds, self.budget.first_step_seconds or 0.0], dtype=torch.float64)
        if self.world > 1:  # every process must choose the same plan: the slowest one's
            seconds = self.accelerator.reduce(seconds.to(self.accelerator.device), "max").cpu()
        if self.budget.first_step_seconds is not None:
            self.budget.first_step_seconds = float(seconds[1])
        steps = self.budget.steps(s.step, float(seconds[0]), self.total_steps)
        if steps is None:
            return
        planned, per_step = self.total_steps, self.budget.per_step
        self._replan(steps)
        bar.total = steps
        self.log.event("time_budget", budget_seconds=self.budget.seconds, seconds_per_step=round(per_step, 4),
                       planned_steps=planned, chosen_steps=steps)
        if self.is_main:
            print(f"train.time_budget_minutes={self.budget.seconds / 60:g}: {per_step:.2f} s per step here, so "
                  f"{steps} of the {planned} planned steps ({steps / self.updates_per_epoch:.2f} epochs); the "
                  f"schedule now ends at step {steps}", flush=True)

    def _optimizer_states(self) -> dict:
        """Optimiser and schedule state; by part name for a task with several optimisers."""
        if None in self.optimizers:
            return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}
        return {"optimizer": {n: o.state_dict() for n, o in self.optimizers.items()},
                "schedule": {n: s.state_dict() for n, s in self.schedules.items()}}

    # ------------------------------------------------------------------ one optimiser step
    def _train_step(self, micro_batches: list[list[int]], loader) -> tuple[float, float]:
        """One optimiser step: each optimiser part in turn (just one for most tasks) over this
        process's micro-batches of the step. Returns the last part's summed loss and item count
        over all processes."""
        from accelerate.utils import send_to_device

        # Batches load as the first part reaches them; the later parts reuse them, and a part may
        # leave tensors in a batch for the next one (a GAN's generated audio, made once).
        batches: list[dict[str, Any]] = []

        def batch_at(micro: int) -> dict[str, Any]:
            if micro == len(batches):
                batches.append(send_to_device(next(loader), self.accelerator.device))
            return batches[micro]

        for part, optimizer in self.optimizers.items():
            totals = self._part_step(batch_at, len(micro_batches), part, optimizer)
        return totals

    def _part_step(self, batch_at: Callable, n_micro: int, part: str | None, optimizer) -> tuple[float, float]:
        """Forward/backward over the micro-batches, then normalise the gradients by the item count
        of the whole step (all micro-batches, all processes) and update ``optimizer``."""
        # Loss and items add up on the device: one host sync per optimiser step, not three per
        # micro-batch (a GPU's queue keeps running). A non-finite loss stops the run before the update.
        device = self.accelerator.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        items = torch.zeros((), dtype=torch.float64, device=device)
        for micro in range(n_micro):
            batch = batch_at(micro)
            last = micro == n_micro - 1
            with nullcontext() if last else self.accelerator.no_sync(self.model), self.accelerator.autocast():
                out = self._forward(batch, train=True, part=part)
                loss = out["loss_sum"].float()
                if loss.requires_grad:  # a part may have nothing to learn yet (all its inputs frozen)
                    self.accelerator.backward(loss)
            loss_sum += loss.detach().double()
            items += out["num_items"]
        totals = torch.stack([loss_sum, items])
        if self.world > 1:
            totals = self.accelerator.reduce(totals, "sum")
        total_loss, total_items = totals.tolist()
        if not math.isfinite(total_loss):
            raise self._diverged(torch.tensor(total_loss))
        # DDP averaged the gradients over processes: undo that, then divide by the step's items.
        scale = self.world / max(total_items, 1.0)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        with torch.no_grad():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, scale)  # one call, not one per parameter
            for p in params if self.l1 else ():
                if p.grad is not None and p.ndim > 1:  # L1 on weights (not biases/norms), once per step
                    p.grad.add_(torch.sign(p), alpha=self.l1)
        if self.cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(params, self.cfg.max_grad_norm)
        optimizer.step()
        for opt in self.optimizers.values():  # a later part's loss may reach an earlier part's weights
            opt.zero_grad(set_to_none=True)
        return total_loss, total_items

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> TrainerState:
        from tqdm.auto import tqdm

        if resume:
            self._resume()
        s, cfg = self.state, self.cfg
        if self.loss_fn is not None and not resume:
            check_user_loss(self)
        if self.baseline and s.baseline is None and self.bundle.test is not None:
            s.baseline = self.evaluate(self.bundle.test)[0]
            self.log.event("baseline", split="test", **s.baseline)

        previous = {sig: signal.signal(sig, lambda *_: self.request_stop())
                    for sig in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
        bar = tqdm(total=self.total_steps, initial=s.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (sys.stderr.isatty() and self.is_main))
        rng_after_update = ckpt.rng_state()
        try:
            self._train_mode()
            while s.epoch < cfg.epochs and not s.finished:
                batches = self._batches(s.epoch)
                steps = [batches[i:i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
                first = s.micro_in_epoch // cfg.grad_accum
                loader = iter(self._loader([b for group in steps[first:] for b in group], s.epoch))
                for group in steps[first:]:
                    t0 = time.perf_counter()
                    loss_sum, items = self._train_step(group, loader)
                    n_samples = sum(len(b) for b in group) * self.world
                    s.step += 1
                    s.micro_in_epoch += len(group)
                    s.samples_seen += n_samples
                    s.train_seconds += time.perf_counter() - t0
                    if self.budget and s.planned_steps is None:
                        if s.step == 1:
                            self.budget.first_step_seconds = s.train_seconds
                        if s.step == self.budget.measure_at(self.total_steps):
                            self._check_budget(bar)
                    for schedule in self.schedules.values():
                        schedule.step_update(s.step)
                    rng_after_update = ckpt.rng_state()
                    bar.update(1)

                    # --- hooks, in order
                    if self.ema:
                        self.ema.update(self._unwrapped)
                    if self.unfreezer and self.unfreezer.maybe_unfreeze(s.step, "step"):
                        self.log.event("unfreeze", step=s.step, groups=self.unfreezer.unfrozen)
                        self._train_mode()
                    self.train_log.add(loss_sum, items, n_samples)
                    logged = self.train_log.maybe_write(s.step, s.epoch, self.optimizer.param_groups[-1]["lr"],
                                                        last=s.step == self.total_steps)
                    if logged:
                        s.history.append({"step": s.step, "epoch": s.epoch, "train_loss": logged["loss"],
                                          "lr": logged["lr"]})
                        bar.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{logged['lr']:.2e}")
                    for callback in self.callbacks:
                        callback(self)
                    at_max = s.step >= self.total_steps
                    end_of_epoch = s.micro_in_epoch >= len(batches)
                    periodic = cfg.eval_every and s.step % cfg.eval_every == 0
                    # Stopping at max_steps mid-epoch still evaluates; at an epoch's end the
                    # epoch-end evaluation below does it.
                    if periodic or (at_max and (cfg.eval_every or not end_of_epoch)):
                        if self._validate():
                            s.finished, s.stop_reason = True, "early stopping"
                        self._save("last", rng=rng_after_update)
                    if at_max and not s.finished:
                        s.finished = True
                        s.stop_reason = ("reached the steps train.time_budget_minutes allows" if s.planned_steps
                                         else "reached train.max_steps" if cfg.max_steps else "finished all epochs")
                    if self._stop_agreed():
                        raise KeyboardInterrupt
                    if s.finished:
                        break
                if s.finished and s.micro_in_epoch < len(batches):
                    break
                # --- end of epoch
                s.epoch += 1
                s.micro_in_epoch = 0
                if self.unfreezer and self.unfreezer.maybe_unfreeze(s.epoch, "epoch"):
                    self.log.event("unfreeze", epoch=s.epoch, groups=self.unfreezer.unfrozen)
                    self._train_mode()
                if not cfg.eval_every and self._validate():
                    s.finished, s.stop_reason = True, "early stopping"
                self._save("last", rng=rng_after_update)
            if not s.stop_reason:
                s.stop_reason = "finished all epochs"
            s.finished = True
            self._save("last", rng=rng_after_update)
        except KeyboardInterrupt:
            saved = self._save("last", rng=rng_after_update)
            self.log.event("interrupted", step=s.step, epoch=s.epoch, checkpoint_saved=saved)
            raise Interrupted(self.run_dir, saved=saved) from None
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.log.event("finished", step=s.step, reason=s.stop_reason)
        return s

    def load_best(self) -> None:
        """Load the best checkpoint's weights (EMA weights when EMA is on) into the model."""
        if self.checkpoints.exists("best"):
            self.checkpoints.load("best", self._unwrapped)
            if self.ema:  # the best weights are the averaged ones: evaluate them as they are
                self.ema = None


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


# ---------------------------------------------------------------------------------------- losses
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


def check_user_loss(trainer: Trainer) -> None:
    """Run ``train.loss`` on the first training batch before any update, RNG-neutral: a loss that
    does not fit the task's outputs fails here, naming the field, not mid-run."""
    from accelerate.utils import send_to_device

    batch = send_to_device(trainer.task.collate([trainer.bundle.train[i] for i in trainer._batches(0)[0]]),
                           trainer.accelerator.device)
    name = getattr(trainer.loss_fn, "__name__", type(trainer.loss_fn).__name__)
    with torch.random.fork_rng(devices=[]), trainer.accelerator.autocast():
        try:
            out = trainer._forward(batch, train=True)
        except Exception as exc:
            raise RecipeError(f"train.loss: {name} failed on the task's outputs "
                              f"({type(exc).__name__}: {exc})") from None
        loss = out["loss_sum"]
        if not (isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.is_floating_point()):
            raise RecipeError(f"train.loss: {name} must return a scalar float tensor (or (sum, count)); got "
                              f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        if not loss.requires_grad:
            raise RecipeError(f"train.loss: {name} returned a loss that does not depend on the model's outputs")
        if not torch.isfinite(loss):
            raise RecipeError(f"train.loss: {name} returned {loss.item()} on the first batch")
    trainer.optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------- evaluation
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
    """Predictions and references as plain values for a user's metric (the task's optional
    ``metric_inputs``; otherwise as ``predict_batch`` returned them)."""
    convert = getattr(task, "metric_inputs", None)
    return convert(predictions, references) if convert else (predictions, references)


def mean_loss(out: dict[str, Any]) -> torch.Tensor:
    """A forward's loss as a mean over its items (for tests and benchmarks that step by hand)."""
    return out["loss_sum"] / max(float(out["num_items"]), 1.0)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
