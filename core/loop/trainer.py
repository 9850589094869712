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

Inner loop. An :class:`~omnitune.core.base.task.InnerLoop` task (PPO) turns each collated batch into
``inner_steps_per_batch`` batches (``inner_batches(model, batch)``), and each is one optimiser step:
forward, backward, normalise, clip, update, schedule, EMA, unfreezing, logging, callbacks. Step counts
(schedule, max_steps, time budget, eval_every) are in these steps, taken in whole batches; evaluation,
checkpoints and stopping happen at a batch's end only, so a resume starts at a batch and draws the
same inner batches again. No gradient accumulation (``train.grad_accum`` must be 1), one process.

The loop's parts live beside it: state.py (settings, checkpointed state), hooks.py, budget.py,
evaluate.py, optim.py (several optimisers), user_loss.py; their public names are re-exported here.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..base.data import BatchOrder
from ..base.errors import OmnituneError, RecipeError, TrainingDiverged
from ..base.task import DataBundle, InnerLoop, LayerGroup, MultiOptimizer
from ..loop import checkpoint as ckpt
from ..loop.budget import TimeBudget
from ..loop.ema import EMA
from ..loop.evaluate import default_eval_batch_size, evaluate_model, gather_objects, mean_loss, metric_inputs
from ..loop.hooks import Checkpointer, EarlyStopping, TrainLog, better
from ..loop.optim import match_param_layout, split_optimizer
from ..loop.state import Interrupted, LoopSettings, TrainerState, resolve_precision
from ..loop.strategies import GradualUnfreezer, frozen_norm_modules
from ..loop.tracking import RunLog
from ..loop.user_loss import batch_size, user_loss

# Names other modules and tests import from here; they live in the modules above.
__all__ = ["Checkpointer", "EarlyStopping", "Interrupted", "LoopSettings", "TimeBudget", "TrainLog", "Trainer",
           "TrainerState", "batch_size", "better", "check_user_loss", "default_eval_batch_size", "evaluate_model",
           "gather_objects", "match_param_layout", "mean_loss", "metric_inputs", "resolve_precision",
           "split_optimizer", "user_loss"]


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
        callbacks: list[Callable[["Trainer"], None]] = (), clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.task, self.bundle, self.run_dir, self.seed, self.cfg = task, bundle, Path(run_dir), seed, loop
        self.groups, self.select_metric, self.select_mode = groups, select_metric, select_mode
        self.early_stopping, self.unfreezer, self.freeze_norm_stats = early_stopping, unfreezer, freeze_norm_stats
        self.l1, self.baseline, self.loss_fn = l1, baseline, loss_fn
        self.extra_metrics = dict(extra_metrics or {})
        self.callbacks = list(callbacks)
        self.clock = clock  # times the optimiser steps (train_seconds, the time budget); tests pass a fake one
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
        parts = task.optimizer_parts(model) if isinstance(task, MultiOptimizer) else None
        if parts and self.world > 1:
            raise RecipeError(f"task {task.name}: several optimisers ({', '.join(parts)}) run in one process only")
        # Optimiser steps per collated batch: an InnerLoop task's inner batches, else 1.
        self.inner_loop = isinstance(task, InnerLoop)
        self.inner_steps = task.inner_steps_per_batch if self.inner_loop else 1
        if self.inner_loop:
            check_inner_loop(task, loop, bool(parts), self.world, loss_fn is not None)
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
        # Optimiser steps; an InnerLoop task takes them in whole batches (max_steps rounds up to one).
        k = self.inner_steps
        self.updates_per_epoch = math.ceil(self.micro_per_epoch / loop.grad_accum) * k
        self.total_steps = loop.epochs * self.updates_per_epoch
        if loop.max_steps:
            self.total_steps = min(self.total_steps, math.ceil(loop.max_steps / k) * k)
        self.schedules = {name: make_schedule(opt, self.total_steps) for name, opt in self.optimizers.items()}
        self.schedule = list(self.schedules.values())[-1]
        self.recipe_steps = self.total_steps  # what the recipe asked; a time budget plans at most this many
        self.budget = TimeBudget(loop.time_budget, unit=k) if loop.time_budget else None
        self.budget_every = self.budget.interval(self.total_steps) if self.budget else 0

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

    def _inner_batches(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """An InnerLoop task's batches for the optimiser steps of one collated batch: made under
        autocast from the model in train mode, which is put back in train mode after."""
        from accelerate.utils import send_to_device

        with self.accelerator.autocast():
            inner = list(self.task.inner_batches(self.model, send_to_device(batch, self.accelerator.device)))
        self._train_mode()
        if len(inner) != self.inner_steps:
            raise OmnituneError(f"task {self.task.name}: inner_batches gave {len(inner)} batches, but "
                                f"inner_steps_per_batch is {self.inner_steps}")
        return inner

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
            self.total_steps = self.state.planned_steps
            for schedule in self.schedules.values():  # re-plans came back with the schedule's state; a
                # checkpoint without them (an older omnitune) decays over the chosen steps from the start
                if getattr(schedule, "total_steps", self.total_steps) != self.total_steps:
                    schedule.total_steps = self.total_steps
        for schedule in self.schedules.values():
            schedule.step_update(self.state.step)
        self.log.event("resume", step=self.state.step, epoch=self.state.epoch)

    def _replan(self, step: int, steps: int) -> None:
        """Train ``steps`` optimiser steps in all, ``step`` being done: the schedules' decay goes on
        from where it is and ends there (LRSchedule.replan)."""
        self.total_steps = self.state.planned_steps = steps
        for schedule in self.schedules.values():
            if hasattr(schedule, "replan"):
                schedule.replan(step, steps)
            elif hasattr(schedule, "total_steps"):
                schedule.total_steps = steps

    def _budget_after_step(self, step_seconds: float, first: bool, bar) -> None:
        """The time budget after an optimiser step: a process's first step (warm-up) is left out of
        the speed window; at a window's end (every ``budget_every`` steps) the plan is revisited."""
        s = self.state
        if first:  # on a resume, the window saved in the checkpoint goes on, without this step
            start = s.budget_window
            s.budget_window = [s.step, s.train_seconds] if start is None else [start[0] + 1, start[1] + step_seconds]
        if s.step % self.budget_every == 0 and s.step < self.total_steps:
            self._check_budget(bar)

    def _check_budget(self, bar) -> None:
        s, (start_step, start_seconds) = self.state, self.state.budget_window
        seconds = torch.tensor([s.train_seconds, s.train_seconds - start_seconds], dtype=torch.float64)
        if self.world > 1:  # every process must choose the same plan: the slowest one's
            seconds = self.accelerator.reduce(seconds.to(self.accelerator.device), "max").cpu()
        so_far, window_seconds, window_steps = float(seconds[0]), float(seconds[1]), s.step - int(start_step)
        s.budget_window = [s.step, s.train_seconds]
        planned = self.total_steps
        steps = self.budget.plan(s.step, so_far, window_steps, window_seconds, planned, self.recipe_steps)
        if steps is None:
            return
        per_step = self.budget.per_step
        self._replan(s.step, steps)
        s.budget_history.append({"step": s.step, "seconds_per_step": round(per_step, 6), "planned_steps": steps})
        bar.total = steps
        self.log.event("time_budget", step=s.step, budget_seconds=self.budget.seconds, seconds_so_far=round(so_far, 3),
                       seconds_per_step=round(per_step, 4), window_steps=window_steps, planned_steps=planned,
                       chosen_steps=steps)
        if self.is_main:
            print(f"train.time_budget_minutes={self.budget.seconds / 60:g}: {per_step:.2f} s per step over the last "
                  f"{window_steps} steps, {max(0.0, self.budget.seconds - so_far):.0f} s left, so {steps} steps in all "
                  f"instead of {planned} ({steps / self.updates_per_epoch:.2f} epochs); the schedule now ends at step "
                  f"{steps}", flush=True)

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
        mid_batch = False  # between the inner steps of an InnerLoop task's batch
        warm = False  # this process has taken a step
        try:
            self._train_mode()
            while s.epoch < cfg.epochs and not s.finished:
                batches = self._batches(s.epoch)
                steps = [batches[i:i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
                first = s.micro_in_epoch // cfg.grad_accum
                loader = iter(self._loader([b for group in steps[first:] for b in group], s.epoch))
                for group in steps[first:]:
                    t0 = self.clock()
                    # An InnerLoop task makes the batches of several optimiser steps from this one;
                    # evaluation, checkpoints and stopping wait for the last (resume stays exact).
                    inner = self._inner_batches(next(loader)) if self.inner_loop else None
                    mid_batch = inner is not None
                    for i in range(self.inner_steps):
                        t0 = t0 if i == 0 else self.clock()
                        loss_sum, items = self._train_step(group, loader if inner is None else iter(inner[i:i + 1]))
                        last_inner = i == self.inner_steps - 1
                        n_samples = sum(len(b) for b in group) * self.world if last_inner else 0
                        s.step += 1
                        s.micro_in_epoch += len(group) if last_inner else 0
                        s.samples_seen += n_samples
                        step_seconds = self.clock() - t0
                        s.train_seconds += step_seconds
                        mid_batch = mid_batch and not last_inner
                        if self.budget:
                            self._budget_after_step(step_seconds, not warm, bar)
                        warm = True
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
                    # --- at the end of the batch (of all its inner steps)
                    at_max = s.step >= self.total_steps
                    end_of_epoch = s.micro_in_epoch >= len(batches)
                    # Whether this batch's steps reached a multiple of eval_every.
                    periodic = cfg.eval_every and (s.step // cfg.eval_every
                                                   > (s.step - self.inner_steps) // cfg.eval_every)
                    # Stopping at max_steps mid-epoch still evaluates; at an epoch's end the
                    # epoch-end evaluation below does it.
                    if periodic or (at_max and (cfg.eval_every or not end_of_epoch)):
                        if self._validate():
                            s.finished, s.stop_reason = True, "early stopping"
                        self._save("last", rng=rng_after_update)
                    if at_max and not s.finished:
                        s.finished = True
                        cut = s.planned_steps is not None and s.planned_steps < self.recipe_steps
                        s.stop_reason = ("reached the steps train.time_budget_minutes allows" if cut
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
            # Between an InnerLoop task's inner steps nothing is saved (its batches are not kept): the
            # last checkpoint, at a batch's end, stays the one to resume from.
            saved = self.checkpoints.exists("last") if mid_batch else self._save("last", rng=rng_after_update)
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


def check_inner_loop(task: InnerLoop, loop: LoopSettings, parts: bool, world: int, user_loss: bool) -> None:
    """Refuse what an InnerLoop task's optimiser steps do not combine with: each inner batch is one
    whole step, so there is nothing to accumulate, and the batches are the task's, not a recipe loss's."""
    steps = task.inner_steps_per_batch
    if not (isinstance(steps, int) and steps >= 1):
        raise OmnituneError(f"task {task.name}: inner_steps_per_batch must be a positive int, got {steps!r}")
    if loop.grad_accum > 1:
        raise RecipeError(f"train.grad_accum: task {task.name} takes {steps} optimiser steps per batch "
                          "(inner loop); set train.grad_accum: 1 and size the batch with train.batch_size")
    if user_loss:
        raise RecipeError(f"train.loss: task {task.name} makes its own training batches (inner loop); "
                          "a recipe loss does not apply")
    if parts:
        raise OmnituneError(f"task {task.name}: an inner loop with several optimisers is not supported")
    if world > 1:
        raise RecipeError(f"task {task.name}: the inner loop runs in one process only")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
