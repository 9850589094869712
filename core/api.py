"""The public Python API: train, evaluate and predict from a recipe.

This module is the one thin adapter between the recipe and the components: it turns recipe
sections into the explicit arguments the task, the trainer and the reports take.

>>> import omnitune
>>> result = omnitune.train("text/minilm-rotten-tomatoes", **{"train.epochs": 1})  # doctest: +SKIP
>>> result.metrics["test"]["accuracy"], result.run_dir  # doctest: +SKIP
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .base import assets
from .adapters import peft as peft_lib
from .base.errors import OmnituneError, RecipeError
from .base.recipe import (BaseRecipe, FinetuneConfig, apply_overrides, dump_recipe, load_recipe, read_yaml,
                     task_finetune_config, validate_recipe)
from .base.registry import TASKS
from .evaluation.report import learning_curves_png, write_json, write_model_card, write_report

RECIPE_FILE = "recipe.yaml"
MODEL_DIR = "model"


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_task(recipe: BaseRecipe):
    task_cls = TASKS.get(recipe.task)
    kwargs = dict(model=recipe.model, data=recipe.data, regularization=recipe.regularization, seed=recipe.seed)
    if task_finetune_config(task_cls) is not FinetuneConfig:  # a task with its own objective fields
        kwargs["finetune"] = recipe.finetune
    return task_cls(**kwargs)


def as_recipe(recipe: str | Path | BaseRecipe, overrides: dict[str, Any] | list[str] | None = None) -> BaseRecipe:
    """A recipe file, shipped recipe name or Recipe object, with dotted overrides validated."""
    if isinstance(recipe, BaseRecipe):
        raw = apply_overrides(recipe.model_dump(mode="json"), overrides or {})
        return validate_recipe(raw, where=f"recipe {recipe.name}")
    return load_recipe(recipe, overrides)


def _direction(metric: str, extra_metrics, section: str) -> str:
    """The registry's (or a user metric's declared) direction of ``metric``; an error names the
    recipe section whose ``metric``/``mode`` fields fix it."""
    from .base.metrics import metric_mode

    try:
        return metric_mode(metric, extra_metrics)
    except RecipeError as exc:
        raise RecipeError(f"{section}.metric: {exc}; or set {section}.mode") from None


def selection(recipe: BaseRecipe, task, extra_metrics=()) -> tuple[str, str]:
    """The metric that picks the best checkpoint and its direction: the recipe's eval.mode, else
    the metric registry's (or a user metric's declared) direction; never guessed from the name."""
    metric = recipe.eval.metric or task.main_metric
    if recipe.eval.mode:
        return metric, recipe.eval.mode
    if metric == task.main_metric:
        return metric, task.main_metric_mode
    return metric, _direction(metric, extra_metrics, "eval")


def early_stopping(recipe: BaseRecipe, select_metric: str, select_mode: str, extra_metrics=()):
    """The recipe's early stopping as a hook (None when off); its metric's direction as selection's."""
    from .loop.trainer import EarlyStopping

    es = recipe.early_stopping
    if not es.enabled:
        return None
    metric = es.metric or select_metric
    mode = es.mode or (select_mode if metric == select_metric else _direction(metric, extra_metrics, "early_stopping"))
    return EarlyStopping(metric, mode, es.patience, es.min_delta)


def user_extra_metrics(recipe: BaseRecipe) -> dict[str, Any]:
    from .base.metrics import load_user_metric

    loaded = [load_user_metric(spec) for spec in recipe.eval.extra_metrics]
    return {m.name: m for m in loaded}


def user_loss_fn(recipe: BaseRecipe) -> Callable | None:
    """``train.loss`` imported (a class is instantiated without arguments), or None."""
    import inspect

    from .base.plugins import import_object

    if recipe.train.loss is None:
        return None
    obj = import_object(recipe.train.loss, where="train.loss")
    if inspect.isclass(obj):
        try:
            obj = obj()
        except TypeError as exc:
            raise RecipeError(f"train.loss: {recipe.train.loss!r} cannot be built without arguments ({exc})") from None
    if not callable(obj):
        raise RecipeError(f"train.loss: {recipe.train.loss!r} is a {type(obj).__name__}, not a loss function")
    return obj


def peft_kwargs(recipe: BaseRecipe) -> dict[str, Any]:
    """The recipe's finetune.peft section as core.peft.apply_peft's keyword arguments."""
    p = recipe.finetune.peft
    return {"method": p.method, "r": p.r, "alpha": p.alpha, "dropout": p.dropout,
            "target_modules": p.target_modules, "feedforward_modules": p.feedforward_modules,
            "modules_to_save": p.modules_to_save, "adapter_name": p.adapter_name}


def build_peft_model(recipe: BaseRecipe, task, model):
    """Inject the recipe's adapter into ``model`` in place; returns the adapter wrapper (or None)."""
    if recipe.finetune.peft is None:
        return None
    groups = task.layer_groups(model)
    quantize_base(recipe, task, model)
    # Bottleneck adapters on a model without a per-architecture default go after each group between
    # the stem and the head (a CNN's stages).
    blocks = [m for g in groups[1:-1] for m in g.modules]
    return peft_lib.apply_peft(model, groups[-1].modules, block_modules=blocks, **peft_kwargs(recipe))


def _new_run_dir(recipe: BaseRecipe) -> Path:
    name = recipe.output.run_name or f"{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(recipe.output.dir) / name
    if (run_dir / RECIPE_FILE).exists():
        raise OmnituneError(f"{run_dir}: a run already exists there; choose another output.run_name "
                            f"or resume it with `omnitune train --resume {run_dir}`")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _shared_run_dir(recipe: BaseRecipe, distributed) -> Path:
    """The main process names and creates the run folder; the others learn it from the main one
    (an error there is raised on every process, so none waits forever)."""
    if distributed.num_processes == 1:
        return _new_run_dir(recipe)
    from torch.distributed import broadcast_object_list

    message: list[Any] = [None]
    if distributed.is_main_process:
        try:
            message = [str(_new_run_dir(recipe))]
        except OmnituneError as exc:
            message = [exc]
    broadcast_object_list(message, src=0)
    if isinstance(message[0], Exception):
        raise message[0]
    return Path(message[0])


def _asset_origin(ref: str) -> str:
    if ref.startswith(assets.ASSET_PREFIX):
        a = assets.ASSETS.get(ref[len(assets.ASSET_PREFIX):].split("/")[0])
        return f"{a.description}; {a.origin}; licence {a.licence}"
    return ref


def process_state():
    """Accelerate's process state: one process, or the group ``torchrun``/``accelerate launch``
    started (gloo on CPU, nccl on GPU); set up once per process."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def build_trainer(rec: BaseRecipe, task, model, bundle, run_dir: Path, *, selection: tuple[str, str] | None = None,
                  early_stop=None, loss_fn: Callable | None = None, extra_metrics: dict | None = None,
                  callbacks: list[Callable] = ()):
    """The recipe's strategy applied to ``model`` (PEFT, if any, already injected), its optimiser,
    schedule and hooks, as a :class:`~omnitune.core.loop.trainer.Trainer` (the boundary between recipe
    sections and the trainer's explicit arguments)."""
    from .loop.optim import LRSchedule, build_optimizer
    from .loop.strategies import apply_strategy, check_groups_cover, param_groups, set_dropout
    from .loop.trainer import LoopSettings, Trainer

    metric, mode = selection or (task.main_metric, task.main_metric_mode)
    groups = task.layer_groups(model)
    check_groups_cover(model, groups)
    if rec.regularization.dropout is not None:
        set_dropout(model, rec.regularization.dropout)
    ft = rec.finetune
    excluded, unfreezer = apply_strategy(model, groups, strategy=ft.strategy, freeze=ft.freeze,
                                         freeze_layers=ft.freeze_layers, unfreeze_every=ft.unfreeze_every,
                                         unfreeze_unit=ft.unfreeze_unit, adapters=ft.peft is not None)
    optimizer = build_optimizer(
        param_groups(model, groups, rec.optim.weight_decay, rec.train.lr, ft.layer_decay, ft.head_lr,
                     exclude_ids=excluded),
        rec.optim.name, rec.train.lr, rec.optim.betas, rec.optim.eps, rec.optim.momentum, rec.optim.nesterov)
    sc = rec.sched

    def make_schedule(opt, total_steps: int) -> LRSchedule:
        warmup = sc.warmup_steps if sc.warmup_steps is not None else round(sc.warmup_ratio * total_steps)
        return LRSchedule(opt, sc.name, total_steps, warmup, sc.min_lr_ratio, sc.power, sc.factor, sc.patience,
                          mode=mode)

    t = rec.train
    loop = LoopSettings(epochs=t.epochs, batch_size=t.batch_size, max_steps=t.max_steps,
                        eval_batch_size=t.eval_batch_size, grad_accum=t.grad_accum, max_grad_norm=t.max_grad_norm,
                        precision=t.precision, eval_every=t.eval_every, log_every=t.log_every,
                        group_by_length=t.group_by_length, num_workers=t.num_workers,
                        save_checkpoints=t.save_checkpoints,
                        time_budget=t.time_budget_minutes and t.time_budget_minutes * 60)
    return Trainer(
        task, model, bundle, run_dir, seed=rec.seed, optimizer=optimizer, make_schedule=make_schedule, loop=loop,
        groups=groups, select_metric=metric, select_mode=mode, early_stopping=early_stop,
        ema_decay=rec.regularization.ema_decay, unfreezer=unfreezer,
        # A PEFT run keeps the whole base as pretrained, norm statistics included, so the
        # adapter-only folder (adapter + head) describes the trained model exactly.
        freeze_norm_stats=ft.freeze_norm_stats or ft.peft is not None, l1=rec.regularization.l1,
        # PEFT checkpoints hold only the adapter (+ head, buffers): megabytes instead of the model.
        adapter_names=peft_lib.checkpoint_names(model) if ft.peft is not None else None,
        baseline=rec.eval.baseline, loss_fn=loss_fn, extra_metrics=extra_metrics, callbacks=list(callbacks))


def train(recipe: str | Path | BaseRecipe, overrides: dict[str, Any] | list[str] | None = None, *,
          resume: str | Path | None = None, callbacks: list[Callable] = (), **kw_overrides: Any) -> RunResult:
    """Train from a recipe (file, shipped name or object) and return the run's metrics and folder.

    Overrides use dotted keys: ``train(r, {"train.lr": 3e-5})`` or ``train(r, **{"train.lr": 3e-5})``.
    ``resume=RUN_DIR`` continues an interrupted run from its last checkpoint. Under ``torchrun`` every
    process calls this; the main process writes the run folder and every process returns the result.
    """
    import torch

    t_start = time.perf_counter()
    if resume is not None:
        run_dir = Path(resume)
        from .loop.checkpoint import recover_checkpoint

        recover_checkpoint(run_dir / "checkpoints" / "last")  # a kill -9 may have fallen mid-swap
        if not (run_dir / RECIPE_FILE).is_file() or not (run_dir / "checkpoints" / "last").is_dir():
            raise OmnituneError(f"{run_dir}: not a run folder with a checkpoint to resume")
        if overrides or kw_overrides:
            raise OmnituneError("--resume continues a run with its own recipe; overrides are not allowed")
        rec = validate_recipe(read_yaml(run_dir / RECIPE_FILE), where=str(run_dir / RECIPE_FILE))
    else:
        merged = dict(overrides) if isinstance(overrides, dict) else {}
        merged.update(kw_overrides)
        rec = as_recipe(recipe, overrides if isinstance(overrides, list) else merged)
    if rec.train.threads:
        torch.set_num_threads(rec.train.threads)
    if rec.finetune.peft is not None:  # QLoRA without a GPU fails here, before any work
        peft_lib.check_quantization(rec.finetune.peft.quantize)
    distributed = process_state()
    is_main = distributed.is_main_process

    # --- everything that can be wrong with the recipe or the data fails before the run folder exists
    seed_everything(rec.seed)
    task = build_task(rec)
    extra_metrics = user_extra_metrics(rec)
    metric, mode = selection(rec, task, extra_metrics.values())
    stopper = early_stopping(rec, metric, mode, extra_metrics.values())
    loss_fn = user_loss_fn(rec)
    bundle = task.build_datasets()
    retention = retention_check(rec, task)  # None without eval.retention; a bad source fails here
    groups_from = check_groups(rec)  # the table eval.groups reads (None without); checked before the run starts
    if resume is None:
        run_dir = _shared_run_dir(rec, distributed)
        if is_main:
            (run_dir / RECIPE_FILE).write_text(dump_recipe(rec))
    if is_main:
        write_json(run_dir / "data_report.json", bundle.report.to_dict())

    # --- model, strategy (what trains), optimiser, trainer
    seed_everything(rec.seed)
    model = task.build_model()
    peft_model = build_peft_model(rec, task, model)  # None without finetune.peft; model trains either way
    checkpointing = None
    if rec.train.gradient_checkpointing:
        from .loop.strategies import enable_gradient_checkpointing

        checkpointing = enable_gradient_checkpointing(peft_model or model)
    trainer = build_trainer(rec, task, model, bundle, run_dir, selection=(metric, mode), early_stop=stopper,
                            loss_fn=loss_fn, extra_metrics=extra_metrics, callbacks=callbacks)
    for message in bundle.report.warnings:  # printed when the data were read; kept in the run's events
        trainer.log.event("data_warning", message=message)
    if is_main:
        procs = f", {trainer.world} processes" if trainer.world > 1 else ""
        print(f"run folder: {run_dir}  (precision {trainer.precision}{procs}, {len(bundle.train)} train / "
              f"{len(bundle.validation)} validation samples, {trainer.total_steps} steps)", flush=True)
    from .loop.feature_cache import describe, maybe_cache_features

    feature_cache = maybe_cache_features(rec, task, trainer)  # swaps in cached trunk outputs when it may
    if is_main and (feature_cache["enabled"] or rec.finetune.strategy in ("feature_extraction", "partial")):
        print(describe(feature_cache), flush=True)
    before = retention_before(retention, trainer, run_dir, resumed=resume is not None, is_main=is_main)
    samples_at_start = samples_before(rec, task, _task_model(trainer, peft_model), bundle, run_dir,
                                      resumed=resume is not None, is_main=is_main)
    state = trainer.fit(resume=resume is not None)

    # --- final evaluation of the best checkpoint (every process takes its shard), then the main
    # process writes the model, metrics and report
    trainer.load_best()
    t_eval = time.perf_counter()
    val_metrics, _, _ = trainer.evaluate(bundle.validation)
    metrics: dict[str, Any] = {"validation": val_metrics}
    if bundle.test is not None:
        test_metrics, preds, refs = trainer.evaluate(bundle.test)
        metrics["test"] = test_metrics
    if state.baseline is not None:
        metrics["baseline_test"] = state.baseline
    if groups_from is not None:
        metrics["groups"] = group_evaluation(rec, task, trainer.evaluate, groups_from)
    if retention is not None:
        from .evaluation.retention import compare

        metrics["retention"] = compare(retention.source, before, retention.run(trainer))
    eval_seconds = time.perf_counter() - t_eval
    metrics.update(best_step=state.best_step, selected_by=metric, stop_reason=state.stop_reason,
                   steps=state.step, epochs_completed=state.epoch)
    if state.planned_steps:  # train.time_budget_minutes cut the plan on this machine
        metrics["time_budget"] = {"minutes": rec.train.time_budget_minutes, "chosen_steps": state.planned_steps,
                                  "epochs": round(state.planned_steps / trainer.updates_per_epoch, 3)}
    from .evaluation.diagnosis import diagnose

    metrics["diagnosis"] = diagnose(state.history, metric, mode, strategy=rec.finetune.strategy,
                                    peft=rec.finetune.peft is not None)  # read from the run's own curves
    trainable, total = peft_lib.trainable_share(model)
    metrics["parameters"] = {"trainable": trainable, "total": total, "trainable_share": round(trainable / total, 6),
                             "peft": rec.finetune.peft.method if rec.finetune.peft else None}
    metrics["timing"] = {
        "train_seconds": round(state.train_seconds, 2),
        "train_samples_per_s": round(state.samples_seen / max(state.train_seconds, 1e-9), 2),
        "final_eval_seconds": round(eval_seconds, 2),
        "wall_seconds_this_process": round(time.perf_counter() - t_start, 2),
        "precision": trainer.precision, "threads": torch.get_num_threads(), "processes": trainer.world,
        "device": str(trainer.accelerator.device), "samples_seen": state.samples_seen,
    }
    metrics["memory"] = {**peak_memory(trainer.accelerator.device), "gradient_checkpointing": checkpointing}
    metrics["feature_cache"] = feature_cache
    if is_main:
        samples = sample_outputs(task, _task_model(trainer, peft_model), bundle, run_dir, "after")
        if samples:  # a task that shows samples (task.sample_outputs) and had some: before/after scores
            metrics["samples"] = {**({"before": samples_at_start} if samples_at_start else {}), "after": samples}
        extras = task.report_extras(run_dir, "test", preds, refs, bundle.test) if bundle.test is not None else []
        if getattr(task, "eval_set_results", None):  # extra evaluation sets a task scored (ASR: codec, noise)
            metrics["eval_sets"] = task.eval_set_results
        model_dir = run_dir / MODEL_DIR
        # A PEFT run saves the adapter only (peft's wrapper writes adapter_config + adapter weights).
        task.save_pretrained(peft_model or trainer.accelerator.unwrap_model(trainer.model), model_dir)
        if peft_model is not None and getattr(model, "config", None) is not None:
            # The base's config (architecture, label names) beside the adapter documents what it adapts.
            model.config.save_pretrained(model_dir)
        write_model_card(model_dir, recipe_name=rec.name, task=rec.task, base_model=rec.model.name,
                         base_origin=_asset_origin(rec.model.name), data_source=rec.data.source,
                         data_origin=_asset_origin(rec.data.source), metrics=metrics, recipe_yaml=dump_recipe(rec))
        write_json(run_dir / "metrics.json", metrics)
        if "groups" in metrics:
            from .evaluation.groups import fairness_png

            fairness_png(metrics["groups"], run_dir / "group_rates.png")
        curves = learning_curves_png(state.history, metric, run_dir / "learning_curves.png")
        write_report(run_dir, recipe_name=rec.name, task=rec.task, model_name=rec.model.name, metrics=metrics,
                     data_report=bundle.report.to_dict(), extras=extras, curves=curves,
                     timing={**metrics["timing"], **metrics["memory"], "feature_cache": describe(feature_cache)})
    trainer.log.close()
    trainer.accelerator.wait_for_everyone()
    return RunResult(run_dir=run_dir, metrics=metrics)


def peak_memory(device) -> dict[str, float]:
    """This process's peak memory so far: max RSS (MB) on every device, and on CUDA the peak of
    memory allocated by tensors (MB)."""
    import resource

    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if getattr(device, "type", str(device)) == "cuda":
        out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def check_groups(rec: BaseRecipe, source: str | None = None, columns: list[str] | None = None) -> str | None:
    """The table ``eval.groups`` reads (or ``source``), with its group columns checked; None without groups."""
    from .evaluation.groups import group_source, read_group_table

    columns = columns if columns is not None else rec.eval.groups
    if not columns:
        return None
    source = source or group_source(rec.eval.group_source, rec.data.source, rec.data.test_source)
    read_group_table(source, columns, max_rows=1)
    return source


def group_evaluation(rec: BaseRecipe, task, evaluate_fn: Callable, source: str,
                     columns: list[str] | None = None) -> dict[str, Any]:
    """Per-group metrics of the model ``evaluate_fn(dataset) -> (metrics, preds, refs)`` scores
    (core/groups.py), with the recipe's minimum count, positive label and eval-sample cap."""
    from .evaluation.groups import evaluate_groups

    return evaluate_groups(task, task.label_names, source, columns or rec.eval.groups, evaluate_fn,
                           min_count=rec.eval.group_min_count, positive_label=rec.eval.positive_label,
                           max_rows=rec.data.max_eval_samples, seed=rec.seed)


def retention_check(rec: BaseRecipe, task):
    """The recipe's retention set (``eval.retention``, core/retention.py) loaded for scoring, or None.
    A linear probe reads the set with its own labels, through a task built on it."""
    if not rec.eval.retention:
        return None
    from .evaluation.retention import RetentionCheck

    columns = {f"data.{k}": v for k, v in rec.eval.retention_data.items()}

    def set_task(own_labels: bool):
        return build_task(as_recipe(rec, {"data.source": rec.eval.retention, "data.validation_source": None,
                                          "data.test_source": None, **columns,
                                          **({} if own_labels else {"data.labels": None})}))

    # metrics: the run's task (its label set), or one reading the set's own columns (retention_data).
    own = task if not columns else set_task(own_labels=True)
    return RetentionCheck(rec.eval.retention, rec.eval.retention_mode, own, lambda: set_task(own_labels=False),
                          rec.seed)


def retention_before(retention, trainer, run_dir: Path, *, resumed: bool, is_main: bool):
    """The starting model's retention score: computed before the first update and kept in the run
    folder, so a resumed run compares against the same starting model."""
    from .evaluation.retention import load_before, save_before

    if retention is None:
        return None
    before = load_before(run_dir) if resumed else None
    if before is None:
        before = retention.run(trainer)
        if is_main:
            save_before(run_dir, before)
    return before


SAMPLES_BEFORE = "samples_before.json"


def _task_model(trainer, peft_model):
    """The model as task code expects it (no DDP or adapter wrapper), with the weights it trains."""
    return peft_lib.task_model(peft_model or trainer.accelerator.unwrap_model(trainer.model))


def sample_outputs(task, model, bundle, run_dir: Path, stage: str) -> dict[str, float] | None:
    """The task's samples of ``model`` on the held-out split (test, else validation), written into the
    run folder, and their scores: the optional ``task.sample_outputs`` (None without it). The random
    state is left as it was, so training draws the same numbers with or without samples."""
    import torch

    from .loop.checkpoint import rng_state, set_rng_state

    hook = getattr(task, "sample_outputs", None)
    held_out = bundle.test if bundle.test is not None else bundle.validation
    if hook is None or held_out is None:
        return None
    state = rng_state()
    try:
        with torch.no_grad():
            return hook(model, held_out, Path(run_dir), stage)
    finally:
        set_rng_state(state)


def samples_before(rec: BaseRecipe, task, model, bundle, run_dir: Path, *, resumed: bool, is_main: bool):
    """The starting model's samples (with eval.baseline): made before the first update and their scores
    kept in the run folder, so a resumed run reports the same starting model."""
    if not (is_main and rec.eval.baseline):
        return None
    path = Path(run_dir) / SAMPLES_BEFORE
    if resumed:
        import json

        return json.loads(path.read_text()) if path.is_file() else None
    scores = sample_outputs(task, model, bundle, run_dir, "before")
    if scores is not None:
        write_json(path, scores)
    return scores


def quantize_base(recipe: BaseRecipe, task, model) -> None:
    """QLoRA's base (``finetune.peft.quantize: 4bit``): every Linear outside the head to 4-bit, in
    place. Training and reloading an adapter both go through here, so the adapter is reattached to
    a base quantised exactly as the one it was trained on. Needs a CUDA GPU (a clear error without)."""
    if recipe.finetune.peft is None or recipe.finetune.peft.quantize == "none":
        return
    peft_lib.check_quantization(recipe.finetune.peft.quantize)
    peft_lib.quantize_4bit(model, task.layer_groups(model)[-1].modules)


def _load_run(run_dir: str | Path, adapter: str | None = None):
    """(recipe, task, model) of a finished run, from the run folder alone: the saved recipe and the
    saved model folder (labels, tokenizer/processor, config). The training data is not read."""
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file():
        raise OmnituneError(f"{run_dir}: not a run folder (no {RECIPE_FILE})")
    if not (run_dir / MODEL_DIR).is_dir():
        raise OmnituneError(f"{run_dir}: the run has no saved model yet (did it finish?)")
    rec = validate_recipe(read_yaml(run_dir / RECIPE_FILE), where=str(run_dir / RECIPE_FILE))
    task = build_task(rec)
    if peft_lib.list_adapters(run_dir / MODEL_DIR):
        return rec, task, load_adapter_model(rec, task, run_dir / MODEL_DIR, active=adapter)
    model = task.load_pretrained(run_dir / MODEL_DIR)
    return rec, task, model


def load_adapter_model(rec: BaseRecipe, task, folder: Path, names: list[str] | None = None,
                       active: str | None = None):
    """The base model rebuilt as the run built it, with the adapters saved in ``folder`` attached;
    returns the adapter wrapper, which forwards like the task's model.

    ``task.restore(folder)`` first reads back what the run learnt from its data (the label set
    sizing the head, the tokenizer/processor): the base is rebuilt without the training data, and a
    change to that data cannot silently change the model. Same seed as training, so a base built
    from random weights (``model.pretrained: false``) is the same one; a QLoRA base is quantised
    by the same step as in training."""
    task.restore(folder)
    seed_everything(rec.seed)
    base = task.build_model()
    quantize_base(rec, task, base)
    return peft_lib.attach_adapters(base, folder, names, active)


def evaluate(run_dir: str | Path, data: str | None = None, batch_size: int | None = None,
             adapter: str | None = None, groups: list[str] | None = None) -> dict[str, Any]:
    """Evaluate a finished run's model on its test split, or on another file/folder (``data``);
    ``adapter`` picks one of several adapters saved in the run's model folder. ``groups`` names
    columns of that table (or of the run's group table): the result then has per-group metrics."""
    import torch

    from .loop.trainer import default_eval_batch_size, evaluate_model, resolve_precision

    rec, task, model = _load_run(run_dir, adapter)
    if data is not None:
        dataset, report = task.load_eval_dataset(data, task.label_names)
    else:
        bundle = task.build_datasets()
        dataset, report = (bundle.test or bundle.validation), bundle.report
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    precision = resolve_precision(rec.train.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    # The same evaluation batch size rule as training (the loss does not depend on it anyway).
    batch_size = batch_size or default_eval_batch_size(rec.train.batch_size, rec.train.eval_batch_size)
    metrics, _, _ = evaluate_model(task, peft_lib.task_model(model), dataset, batch_size, device, autocast,
                                   extra_metrics=user_extra_metrics(rec))
    out = {"data": data or "test split", "samples": len(dataset), "metrics": metrics,
           "data_report": report.to_dict()}
    if groups:
        source = check_groups(rec, data, list(groups))
        out["groups"] = group_evaluation(
            rec, task, lambda ds: evaluate_model(task, peft_lib.task_model(model), ds, batch_size, device, autocast,
                                                 extra_metrics=user_extra_metrics(rec)), source, list(groups))
    return out


def merge_adapter(run_dir: str | Path, out_dir: str | Path, adapter: str | None = None) -> Path:
    """Fold one adapter of a PEFT run (or adapter library) into the base weights and save the plain
    model in the task's layout (loads without peft, as a full fine-tuning run's model does)."""
    _, task, model = _load_run(run_dir, adapter)
    task.save_pretrained(peft_lib.merge_adapter(model, adapter), Path(out_dir))
    return Path(out_dir)


def predict(run_dir: str | Path, inputs: list[str], adapter: str | None = None) -> list[dict[str, Any]]:
    """Predictions of a finished run's model for raw inputs (texts, or file paths for images/audio)."""
    _, task, model = _load_run(run_dir, adapter)
    return task.predict(peft_lib.task_model(model), list(inputs))


def export(run_dir: str | Path, out_dir: str | Path | None = None, *, format: str = "onnx",
           quantize: str | None = None, adapter: str | None = None, all_adapters: bool = False, **options: Any):
    """Export a finished run's model (an adapter merged into its base first) to ONNX, check parity
    against PyTorch on the run's validation samples, optionally quantise to int8, and write the
    export report (see core/export.py); returns the export folder and its manifest.
    ``all_adapters``: an adapter library as the base graph plus one weights file per adapter."""
    from .deploy.export import export_adapters, export_run

    if all_adapters:
        return export_adapters(run_dir, out_dir, **{k: v for k, v in options.items() if k in ("atol", "opset")})
    return export_run(run_dir, out_dir, fmt=format, quantize=quantize, adapter=adapter, **options)


def predict_onnx(export_dir: str | Path, inputs: list[str], variant: str = "fp32",
                 adapter: str | None = None) -> list[dict[str, Any]]:
    """Predictions of an exported model (``omnitune export``) with ONNX Runtime; ``adapter`` picks
    one adapter of an ``--all-adapters`` export."""
    from .deploy.onnx_predict import predict_onnx as run

    return run(export_dir, inputs, variant, adapter)


def tune(recipe: str | Path | BaseRecipe, overrides: dict[str, Any] | list[str] | None = None, *,
         n_trials: int | None = None, timeout_s: float | None = None, storage: str | None = None,
         study_dir: str | Path | None = None, callbacks: list[Callable] = (), enqueue: list[dict] = ()):
    """Hyper-parameter search over the recipe's ``tune.space`` (see core/tune.py); arguments given
    here win over the recipe's ``tune`` section. Re-running with the same study folder resumes."""
    from .studies.tune import check_space, run_study, study_dir_for

    rec = as_recipe(recipe, overrides)
    check_space(rec, rec.tune.space, where=f"recipe {rec.name}")
    return run_study(rec, study_dir=Path(study_dir) if study_dir else study_dir_for(rec),
                     storage=storage or rec.tune.storage, n_trials=n_trials or rec.tune.n_trials,
                     timeout_s=timeout_s or rec.tune.timeout_s, train_fn=train,
                     selection=selection(rec, build_task(rec)), callbacks=list(callbacks), enqueue=list(enqueue))


def cross_validate(recipe: str | Path | BaseRecipe, overrides: dict[str, Any] | list[str] | None = None, *,
                   folds: int = 5, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Stratified K-fold cross-validation (see core/cv.py): each fold is a full run; returns the
    per-fold test metrics and their mean and standard deviation."""
    from .studies.cv import run_cv

    rec = as_recipe(recipe, overrides)
    task = build_task(rec)
    out = Path(out_dir) if out_dir else Path(rec.output.dir) / f"{rec.name}-cv{folds}-{datetime.now():%Y%m%d-%H%M%S}"
    return run_cv(rec, folds, out, train_fn=train, main_metric=selection(rec, task)[0], task=task)


def curve(recipe: str | Path | BaseRecipe, overrides: dict[str, Any] | list[str] | None = None, *,
          sizes: str | list[int], repeats: int = 1, compare: str | list[str] = "scratch",
          out_dir: str | Path | None = None) -> dict[str, Any]:
    """Test metric against training-set size (core/curve.py): pretrained vs scratch and the listed
    strategies, on nested stratified subsets; writes curve.md/.csv/.json/.png."""
    from .studies.curve import parse_sizes, parse_variants, run_curve

    rec = as_recipe(recipe, overrides)
    task = build_task(rec)
    metric, mode = selection(rec, task)
    sizes = parse_sizes(sizes) if isinstance(sizes, str) else sorted(set(sizes))
    out = Path(out_dir) if out_dir else Path(rec.output.dir) / f"{rec.name}-curve-{datetime.now():%Y%m%d-%H%M%S}"
    return run_curve(rec, task, sizes, repeats, parse_variants(compare), out, train_fn=train, metric=metric,
                     mode=mode)

