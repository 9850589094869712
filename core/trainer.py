"""One training loop for every domain, on Hugging Face Accelerate.

Accelerate wraps only devices and precision; the loop itself reads top to bottom in
:meth:`Trainer.fit`: for each epoch, for each micro-batch: forward, backward, and every
``grad_accum`` micro-batches clip, step, schedule, log, maybe evaluate / checkpoint / stop.

The loop is resumable to the step: batch order is a function of (seed, epoch), and checkpoints
hold the position in the epoch, the RNG state taken right after the last optimiser update, the
optimiser, schedule, EMA and unfreezing state. Evaluation never consumes the global RNG.
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

from . import checkpoint as ckpt
from . import peft as peft_lib
from .data import BatchOrder
from .ema import EMA
from .errors import OmnituneError, RecipeError, TrainingDiverged
from .optim import LRSchedule, build_optimizer
from .recipe import (EarlyStoppingConfig, FinetuneConfig, OptimConfig, RegularizationConfig, SchedConfig,
                     TrainConfig)
from .strategies import (GradualUnfreezer, apply_trainable, check_groups_cover, frozen_norm_modules,
                         frozen_parameter_ids, param_groups, set_dropout)
from .task import DataBundle
from .tracking import RunLog


class Interrupted(OmnituneError):
    """Training was stopped by Ctrl-C / SIGTERM after saving a checkpoint."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; checkpoint saved. Resume with: omnitune train --resume {run_dir}")
        self.run_dir = run_dir


@dataclass
class TrainerState:
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of `epoch` consumed at the last optimiser update
    step: int = 0  # optimiser updates done
    samples_seen: int = 0
    train_seconds: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    es_best: float | None = None  # best value of the early-stopping metric
    finished: bool = False
    stop_reason: str = ""
    unfreezer: dict | None = None
    baseline: dict | None = None
    history: list[dict] = field(default_factory=list)


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


class Trainer:
    """Trains ``model`` for ``task`` on ``bundle``; writes checkpoints and logs into ``run_dir``."""

    def __init__(
        self, task: Any, model: nn.Module, bundle: DataBundle, run_dir: Path, *, seed: int,
        train: TrainConfig, optim: OptimConfig, sched: SchedConfig, finetune: FinetuneConfig,
        regularization: RegularizationConfig, early_stopping: EarlyStoppingConfig,
        select_metric: str, select_mode: str, baseline: bool = False,
        callbacks: list[Callable[["Trainer"], None]] = (),
    ) -> None:
        from accelerate import Accelerator

        self.task, self.bundle, self.run_dir, self.seed = task, bundle, Path(run_dir), seed
        self.cfg, self.es, self.reg = train, early_stopping, regularization
        self.select_metric, self.select_mode, self.baseline = select_metric, select_mode, baseline
        self.callbacks = list(callbacks)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.log = RunLog(self.run_dir)
        self.state = TrainerState()
        self._stop_requested = False

        use_cpu = not torch.cuda.is_available()
        device = torch.device("cpu" if use_cpu else "cuda")
        self.precision = resolve_precision(train.precision, device)
        # Accelerate keeps the precision in process-wide state; several runs in one process (the
        # API, search, cross-validation) may each pick their own, so clear it first. The
        # distributed set-up (PartialState) is kept.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=use_cpu)

        # --- strategy: freezing, dropout, parameter groups (all from the task's layer groups)
        self.groups = task.layer_groups(model)
        check_groups_cover(model, self.groups)
        if regularization.dropout is not None:
            set_dropout(model, regularization.dropout)
        self.unfreezer = None
        if finetune.strategy == "gradual":
            self.unfreezer = GradualUnfreezer(model, self.groups, finetune.unfreeze_every, finetune.unfreeze_unit)
            frozen = self.unfreezer.frozen_ids()
            excluded: set[int] = set()  # gradual: every parameter is in the optimiser from the start
        elif finetune.peft is not None:
            # core.peft.apply_peft already froze the base: what trains is the adapter and the head.
            frozen = {id(p) for p in model.parameters() if not p.requires_grad}
            excluded = frozen
        else:
            frozen = frozen_parameter_ids(model, self.groups, finetune.strategy, finetune.freeze,
                                          finetune.freeze_layers)
            excluded = frozen
        apply_trainable(model, frozen)
        # A PEFT run keeps the whole base as pretrained, norm statistics included, so the adapter-only
        # folder (adapter + head) describes the trained model exactly.
        self.freeze_norm_stats = finetune.freeze_norm_stats or finetune.peft is not None
        # PEFT checkpoints hold only the adapter (+ head, buffers): megabytes instead of the model.
        self.adapter_names = peft_lib.checkpoint_names(model) if finetune.peft is not None else None
        groups = param_groups(model, self.groups, optim.weight_decay, train.lr, finetune.layer_decay,
                              finetune.head_lr, exclude_ids=excluded)
        optimizer = build_optimizer(groups, optim.name, train.lr, optim.betas, optim.eps, optim.momentum,
                                    optim.nesterov)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

        # --- data order and step counts
        n_proc = self.accelerator.num_processes
        lengths = bundle.train_lengths if train.group_by_length else None
        effective = train.batch_size * train.grad_accum
        self.order = BatchOrder(len(bundle.train), train.batch_size, seed, lengths, group_size=effective * 50)
        self.micro_per_epoch = len(self.order.batches(0)) // n_proc
        if self.micro_per_epoch == 0:
            raise OmnituneError(
                f"the training set ({len(bundle.train)} samples) is smaller than one batch per process")
        self.updates_per_epoch = math.ceil(self.micro_per_epoch / train.grad_accum)
        self.total_steps = train.epochs * self.updates_per_epoch
        if train.max_steps:
            self.total_steps = min(self.total_steps, train.max_steps)
        warmup = sched.warmup_steps if sched.warmup_steps is not None else round(sched.warmup_ratio * self.total_steps)
        self.schedule = LRSchedule(self.optimizer, sched.name, self.total_steps, warmup, sched.min_lr_ratio,
                                   sched.power, sched.factor, sched.patience, mode=select_mode)
        self.ema = EMA(self._unwrapped, regularization.ema_decay) if regularization.ema_decay else None
        self.trainable_params = [p for p in model.parameters() if id(p) not in excluded]

    # ------------------------------------------------------------------ helpers
    @property
    def _unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and stop at the next micro-batch (what SIGTERM does)."""
        self._stop_requested = True

    def _train_mode(self) -> None:
        self.model.train()
        if self.freeze_norm_stats:
            frozen = {id(p) for p in self.model.parameters() if not p.requires_grad}
            for m in frozen_norm_modules(self.groups, frozen):
                m.eval()

    def _batches(self, epoch: int) -> list[list[int]]:
        rank, n_proc = self.accelerator.process_index, self.accelerator.num_processes
        batches = self.order.batches(epoch)
        return batches[rank::n_proc][: self.micro_per_epoch]

    def _loader(self, dataset, batch_sampler, epoch: int = 0) -> DataLoader:
        # An explicit generator: worker seeds then do not consume (or depend on) the global RNG.
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=self.task.collate,
                          num_workers=self.cfg.num_workers, generator=generator,
                          persistent_workers=False)

    def _l1_penalty(self) -> torch.Tensor:
        return sum(p.abs().sum() for p in self.trainable_params if p.requires_grad and p.ndim > 1)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, dataset, split: str) -> tuple[dict[str, float], list, list]:
        """Loss and the task's metrics on a dataset; RNG-neutral (a resumed run stays exact)."""
        was_training = self.model.training
        ema_ctx = self.ema.swapped_in(self._unwrapped) if self.ema else nullcontext()
        with ema_ctx:
            result = evaluate_model(self.task, self.model, dataset, self.cfg.eval_batch_size or self.cfg.batch_size * 2,
                                    self.accelerator.device, self.accelerator.autocast, self.cfg.num_workers)
        if was_training:
            self._train_mode()
        return result

    def _after_eval(self, metrics: dict[str, float]) -> bool:
        """Record an evaluation; update best checkpoint, plateau schedule, early stopping.
        Returns True when early stopping says stop."""
        s = self.state
        if self.select_metric not in metrics:
            raise RecipeError(f"eval.metric: {self.select_metric!r} is not a metric of task "
                              f"{self.task.name} (known: {', '.join(sorted(metrics))})")
        s.history.append({"step": s.step, "epoch": s.epoch, **{f"val_{k}": v for k, v in metrics.items()}})
        self.log.event("eval", step=s.step, epoch=s.epoch, split="validation", **metrics)
        self.log.scalars("validation", metrics, s.step)
        value = metrics[self.select_metric]
        if better(value, s.best_metric, self.select_mode):
            s.best_metric, s.best_step = value, s.step
            self._save(self.ckpt_dir / "best", full=False)
        self.schedule.step_metric(value)
        if not self.es.enabled:
            return False
        es_metric = self.es.metric or self.select_metric
        if es_metric not in metrics:
            raise RecipeError(f"early_stopping.metric: {es_metric!r} is not a metric of task "
                              f"{self.task.name} (known: {', '.join(sorted(metrics))})")
        es_mode = self.es.mode or ("min" if es_metric == "loss" else self.select_mode)
        if better(metrics[es_metric], s.es_best, es_mode, self.es.min_delta):
            s.es_best, s.bad_evals = metrics[es_metric], 0
        else:
            s.bad_evals += 1
        return s.bad_evals >= self.es.patience

    # ------------------------------------------------------------------ checkpoints
    def _save(self, path: Path, full: bool = True, rng: dict | None = None) -> None:
        if not self.cfg.save_checkpoints and path.name != "best":
            return
        s = self.state
        s.unfreezer = self.unfreezer.state_dict() if self.unfreezer else None
        extra = None
        if full:
            extra = {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                     "rng": rng or ckpt.rng_state(), "ema": self.ema.state_dict() if self.ema else None}
        model = self._unwrapped
        ctx = self.ema.swapped_in(model) if (self.ema and not full) else nullcontext()
        with ctx:
            ckpt.save_checkpoint(path, model, asdict(s), extra, names=self.adapter_names)

    def _load(self, path: Path) -> tuple[dict, dict]:
        return ckpt.load_checkpoint(path, self._unwrapped, names=self.adapter_names)

    def _resume(self, path: Path) -> None:
        state, extra = self._load(path)
        self.state = TrainerState(**state)
        self.optimizer.load_state_dict(extra["optimizer"])
        self.schedule.load_state_dict(extra["schedule"])
        if self.ema and extra.get("ema"):
            self.ema.load_state_dict(extra["ema"])
        if self.unfreezer and self.state.unfreezer:
            self.unfreezer.load_state_dict(self.state.unfreezer)
        ckpt.set_rng_state(extra["rng"])
        self.schedule.step_update(self.state.step)
        self.log.event("resume", step=self.state.step, epoch=self.state.epoch)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> TrainerState:
        from accelerate.utils import send_to_device
        from tqdm.auto import tqdm

        if resume:
            self._resume(self.ckpt_dir / "last")
        s, cfg = self.state, self.cfg
        if self.baseline and s.baseline is None and self.bundle.test is not None:
            s.baseline, _, _ = self.evaluate(self.bundle.test, "test")
            self.log.event("baseline", split="test", **s.baseline)

        previous = {sig: signal.signal(sig, lambda *_: self.request_stop())
                    for sig in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
        bar = tqdm(total=self.total_steps, initial=s.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not sys.stderr.isatty())
        rng_after_update = ckpt.rng_state()
        window_loss, window_n, window_samples, window_t0 = 0.0, 0, 0, time.perf_counter()
        try:
            self._train_mode()
            while s.epoch < cfg.epochs and not s.finished:
                batches = self._batches(s.epoch)
                groups = [batches[i:i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
                first_group = s.micro_in_epoch // cfg.grad_accum
                flat = [b for g in groups[first_group:] for b in g]
                loader = iter(self._loader(self.bundle.train, flat, s.epoch))
                for group in groups[first_group:]:
                    t0 = time.perf_counter()
                    n_samples = sum(len(b) for b in group)
                    for micro, _ in enumerate(group):
                        if self._stop_requested:
                            raise KeyboardInterrupt
                        batch = send_to_device(next(loader), self.accelerator.device)
                        is_last = micro == len(group) - 1
                        sync = nullcontext() if is_last else self.accelerator.no_sync(self.model)
                        with sync, self.accelerator.autocast():
                            out = self.task.forward(self.model, batch, train=True)
                            loss = out["loss"]
                            if not torch.isfinite(loss):
                                raise TrainingDiverged(
                                    f"loss is {loss.item()} at step {s.step} (epoch {s.epoch}); stopped. The last "
                                    f"good checkpoint is kept in {self.ckpt_dir}. Try a lower train.lr or "
                                    f"train.precision=fp32")
                            # Each micro-batch's share of the effective batch, so 2 x 4 equals 8.
                            scaled = loss * (len(group[micro]) / n_samples)
                            if self.reg.l1:
                                scaled = scaled + self.reg.l1 * self._l1_penalty() / len(group)
                            self.accelerator.backward(scaled)
                        window_loss += loss.item() * len(group[micro])
                        window_n += len(group[micro])
                    if cfg.max_grad_norm:
                        self.accelerator.clip_grad_norm_(self.trainable_params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    s.step += 1
                    s.micro_in_epoch += len(group)
                    s.samples_seen += n_samples * self.accelerator.num_processes
                    s.train_seconds += time.perf_counter() - t0
                    window_samples += n_samples
                    self.schedule.step_update(s.step)
                    if self.ema:
                        self.ema.update(self._unwrapped)
                    rng_after_update = ckpt.rng_state()
                    bar.update(1)
                    if s.step % cfg.log_every == 0 or s.step == self.total_steps:
                        elapsed = time.perf_counter() - window_t0
                        logged = {"loss": window_loss / max(1, window_n), "lr": self.optimizer.param_groups[-1]["lr"],
                                  "samples_per_s": window_samples / max(elapsed, 1e-9), "epoch": s.epoch}
                        self.log.event("train", step=s.step, **logged)
                        self.log.scalars("train", logged, s.step)
                        s.history.append({"step": s.step, "epoch": s.epoch, "train_loss": logged["loss"],
                                          "lr": logged["lr"]})
                        bar.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{logged['lr']:.2e}",
                                        sps=f"{logged['samples_per_s']:.1f}")
                        window_loss, window_n, window_samples, window_t0 = 0.0, 0, 0, time.perf_counter()
                    if self.unfreezer and self.unfreezer.maybe_unfreeze(s.step, "step"):
                        self.log.event("unfreeze", step=s.step, groups=self.unfreezer.unfrozen)
                        self._train_mode()
                    for callback in self.callbacks:
                        callback(self)
                    at_max = s.step >= self.total_steps
                    end_of_epoch = s.micro_in_epoch >= len(batches)
                    periodic = cfg.eval_every and s.step % cfg.eval_every == 0
                    # Stopping at max_steps mid-epoch still evaluates; at an epoch's end the
                    # epoch-end evaluation below does it.
                    if periodic or (at_max and (cfg.eval_every or not end_of_epoch)):
                        if self._after_eval(self.evaluate(self.bundle.validation, "validation")[0]):
                            s.finished, s.stop_reason = True, "early stopping"
                        self._save(self.ckpt_dir / "last", rng=rng_after_update)
                    if at_max and not s.finished:
                        s.finished = True
                        s.stop_reason = "reached train.max_steps" if cfg.max_steps else "finished all epochs"
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
                if not cfg.eval_every:
                    if self._after_eval(self.evaluate(self.bundle.validation, "validation")[0]):
                        s.finished, s.stop_reason = True, "early stopping"
                self._save(self.ckpt_dir / "last", rng=rng_after_update)
            if not s.stop_reason:
                s.stop_reason = "finished all epochs"
            s.finished = True
            self._save(self.ckpt_dir / "last", rng=rng_after_update)
        except KeyboardInterrupt:
            self._save(self.ckpt_dir / "last", rng=rng_after_update)
            self.log.event("interrupted", step=s.step, epoch=s.epoch)
            raise Interrupted(self.run_dir) from None
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.log.event("finished", step=s.step, reason=s.stop_reason)
        return s

    def load_best(self) -> None:
        """Load the best checkpoint's weights (EMA weights when EMA is on) into the model."""
        best = self.ckpt_dir / "best"
        if best.exists():
            self._load(best)
            if self.ema:  # the best weights are the averaged ones: evaluate them as they are
                self.ema = None


@torch.no_grad()
def evaluate_model(task: Any, model: nn.Module, dataset, batch_size: int, device: torch.device,
                   autocast: Callable = nullcontext, num_workers: int = 0) -> tuple[dict[str, float], list, list]:
    """Mean loss plus ``task.compute_metrics`` over ``dataset`` in order; leaves the global RNG as it was."""
    from accelerate.utils import send_to_device

    model.eval()
    batches = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=task.collate, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    loss_sum, count, preds, refs = 0.0, 0, [], []
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            batch = send_to_device(batch, device)
            with autocast():
                out = task.forward(model, batch, train=False)
            p, r = task.predict_batch(model, batch, out)
            loss_sum += float(out["loss"]) * len(r)
            count += len(r)
            preds.extend(p)
            refs.extend(r)
    metrics = dict(task.compute_metrics(preds, refs))
    metrics["loss"] = loss_sum / max(1, count)
    return metrics, preds, refs


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
