"""The one thin adapter between the recipe and the components: recipe sections in, the explicit
arguments (or built objects) the task, the trainer and the evaluations take out. Training and
evaluation (core/pipeline.py) and the studies build through here; nothing below reads a recipe
section it was not handed.

>>> from omnitune.core.components import as_recipe, selection
>>> from omnitune.core.runs import build_task
>>> rec = as_recipe("text/minilm-rotten-tomatoes", {"train.epochs": 1})  # doctest: +SKIP
>>> selection(rec, build_task(rec))  # doctest: +SKIP
('accuracy', 'max')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .adapters import peft as peft_lib
from .base.errors import RecipeError
from .base.recipe import BaseRecipe, apply_overrides, load_recipe, validate_recipe
from .runs import build_task, quantize_base


def as_recipe(recipe: str | Path | BaseRecipe, overrides: dict[str, Any] | list[str] | None = None) -> BaseRecipe:
    """A recipe file, shipped recipe name or Recipe object, with dotted overrides validated."""
    if isinstance(recipe, BaseRecipe):
        raw = apply_overrides(recipe.model_dump(mode="json"), overrides or {})
        return validate_recipe(raw, where=f"recipe {recipe.name}")
    return load_recipe(recipe, overrides)


def metric_direction(metric: str, extra_metrics, section: str) -> str:
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
    from .base.metrics import declared_metrics  # a metric the task declares itself has its direction too

    return metric, metric_direction(metric, (*extra_metrics, *declared_metrics(task)), "eval")


def early_stopping(recipe: BaseRecipe, select_metric: str, select_mode: str, extra_metrics=()):
    """The recipe's early stopping as a hook (None when off); its metric's direction as selection's."""
    from .loop.trainer import EarlyStopping

    es = recipe.early_stopping
    if not es.enabled:
        return None
    metric = es.metric or select_metric
    mode = es.mode or (select_mode if metric == select_metric else metric_direction(metric, extra_metrics,
                                                                                     "early_stopping"))
    return EarlyStopping(metric, mode, es.patience, es.min_delta)


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
    """The recipe's finetune.peft section as core.adapters.peft.apply_peft's keyword arguments."""
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
    (core/evaluation/groups.py), with the recipe's minimum count, positive label and eval-sample cap."""
    from .evaluation.groups import evaluate_groups

    return evaluate_groups(task, task.label_names, source, columns or rec.eval.groups, evaluate_fn,
                           min_count=rec.eval.group_min_count, positive_label=rec.eval.positive_label,
                           max_rows=rec.data.max_eval_samples, seed=rec.seed)


def retention_check(rec: BaseRecipe, task):
    """The recipe's retention set (``eval.retention``, core/evaluation/retention.py) loaded for scoring,
    or None. A linear probe reads the set with its own labels, through a task built on it."""
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
