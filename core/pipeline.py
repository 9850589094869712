"""``train`` and ``evaluate`` as named stages. Recipe sections become the components' explicit
arguments in core/components.py; the run folder's names and loading are core/runs.py's.

``train`` reads top to bottom::

    recipe  = resolve_recipe(...)              # file / shipped name / object, overrides; or a resumed run's
    plan    = prepare(recipe)                  # task, data, metrics, hooks: every recipe or data error, no folder yet
    run_dir = open_run_folder(recipe, plan, resume)
    built   = build(recipe, plan, run_dir, callbacks)   # model, strategy / PEFT, optimiser, Trainer, feature cache
    state, start = fit(recipe, plan, built, run_dir, resumed)
    metrics, test_outputs = final_evaluation(recipe, plan, built, state, start, t_start)
    write_outputs(recipe, plan, built, run_dir, metrics, state, start, test_outputs)   # main process only
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .adapters import peft as peft_lib
from .base.errors import OmnituneError
from .base.metrics import declared_metrics
from .base.recipe import BaseRecipe, dump_recipe
from .base.task import ExtraEvaluation, ReportsExtras, SampleOutputs
from .components import (as_recipe, build_peft_model, build_trainer, check_groups, early_stopping, group_evaluation,
                         process_state, retention_check, selection, user_loss_fn)
from .evaluation.report import learning_curves_png, model_card_info, write_json, write_model_card, write_report
from .runs import (DATA_REPORT_FILE, GROUP_RATES_FILE, LEARNING_CURVES_FILE, METRICS_FILE, MODEL_DIR, RECIPE_FILE,
                   SAMPLES_BEFORE, asset_origin, build_task, check_resumable, load_run, load_run_recipe,
                   seed_everything, shared_run_dir, user_extra_metrics)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


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


def task_model(trainer, peft_model):
    """The model as task code expects it (no DDP or adapter wrapper), with the weights it trains."""
    return peft_lib.task_model(peft_model or trainer.accelerator.unwrap_model(trainer.model))


def sample_outputs(task, model, bundle, run_dir: Path, stage: str) -> dict[str, float] | None:
    """The task's samples of ``model`` on the held-out split (test, else validation), written into the
    run folder, and their scores (None for a task without :class:`SampleOutputs`). The random state is
    left as it was, so training draws the same numbers with or without samples."""
    import torch

    from .loop.checkpoint import rng_state, set_rng_state

    held_out = bundle.test if bundle.test is not None else bundle.validation
    if not isinstance(task, SampleOutputs) or held_out is None:
        return None
    state = rng_state()
    try:
        with torch.no_grad():
            return task.sample_outputs(model, held_out, Path(run_dir), stage)
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


def peak_memory(device) -> dict[str, float]:
    """This process's peak memory so far: max RSS (MB) on every device, and on CUDA the peak of
    memory allocated by tensors (MB)."""
    import resource

    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if getattr(device, "type", str(device)) == "cuda":
        out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


# ---- train, stage by stage ------------------------------------------------------------------------


@dataclass
class Plan:
    """What ``prepare`` resolved from the recipe and the data, before the run folder exists."""

    task: Any
    bundle: Any  # the task's DataBundle
    extra_metrics: dict[str, Any]
    metric: str  # selects the best checkpoint, with mode
    mode: str
    stopper: Any  # EarlyStopping or None
    loss_fn: Callable | None
    retention: Any  # RetentionCheck or None
    groups_from: str | None  # the table eval.groups reads
    distributed: Any  # accelerate's PartialState

    @property
    def is_main(self) -> bool:
        return self.distributed.is_main_process


@dataclass
class Built:
    """The model, what trains in it, and the Trainer driving it."""

    model: Any
    peft_model: Any  # the adapter wrapper, or None without finetune.peft
    trainer: Any
    checkpointing: Any  # gradient checkpointing's note, or None
    feature_cache: dict[str, Any]


@dataclass
class Start:
    """The starting model's scores, kept to compare the trained one against."""

    retention: dict[str, Any] | None
    samples: dict[str, float] | None


def resolve_recipe(recipe, overrides, kw_overrides: dict[str, Any], resume: str | Path | None) -> BaseRecipe:
    """The recipe to train: ``recipe`` with its overrides, or a resumed run's own recipe (no overrides)."""
    if resume is not None:
        run_dir = check_resumable(resume)
        if overrides or kw_overrides:
            raise OmnituneError("--resume continues a run with its own recipe; overrides are not allowed")
        return load_run_recipe(run_dir)
    merged = dict(overrides) if isinstance(overrides, dict) else {}
    merged.update(kw_overrides)
    return as_recipe(recipe, overrides if isinstance(overrides, list) else merged)


def prepare(rec: BaseRecipe) -> Plan:
    """Everything that can be wrong with the recipe or the data fails here, before the run folder exists."""
    import torch

    if rec.train.threads:
        torch.set_num_threads(rec.train.threads)
    if rec.finetune.peft is not None:  # QLoRA without a GPU fails here, before any work
        peft_lib.check_quantization(rec.finetune.peft.quantize)
    distributed = process_state()
    seed_everything(rec.seed)
    task = build_task(rec)
    extra_metrics = user_extra_metrics(rec)
    metric, mode = selection(rec, task, extra_metrics.values())
    stopper = early_stopping(rec, metric, mode, (*extra_metrics.values(), *declared_metrics(task)))
    loss_fn = user_loss_fn(rec)
    bundle = task.build_datasets()
    retention = retention_check(rec, task)  # None without eval.retention; a bad source fails here
    groups_from = check_groups(rec)  # the table eval.groups reads (None without); checked before the run starts
    return Plan(task, bundle, extra_metrics, metric, mode, stopper, loss_fn, retention, groups_from, distributed)


def open_run_folder(rec: BaseRecipe, plan: Plan, resume: str | Path | None) -> Path:
    """A new run folder with the resolved recipe (or the resumed one), and the data report."""
    if resume is not None:
        run_dir = Path(resume)
    else:
        run_dir = shared_run_dir(rec, plan.distributed)
        if plan.is_main:
            (run_dir / RECIPE_FILE).write_text(dump_recipe(rec))
    if plan.is_main:
        write_json(run_dir / DATA_REPORT_FILE, plan.bundle.report.to_dict())
    return run_dir


def build(rec: BaseRecipe, plan: Plan, run_dir: Path, callbacks: list[Callable]) -> Built:
    """The model (seeded), the strategy and adapters, the Trainer, and the frozen-trunk feature cache."""
    from .loop.feature_cache import describe, maybe_cache_features

    task, bundle = plan.task, plan.bundle
    seed_everything(rec.seed)
    model = task.build_model()
    peft_model = build_peft_model(rec, task, model)  # None without finetune.peft; model trains either way
    checkpointing = None
    if rec.train.gradient_checkpointing:
        from .loop.strategies import enable_gradient_checkpointing

        checkpointing = enable_gradient_checkpointing(peft_model or model)
    trainer = build_trainer(rec, task, model, bundle, run_dir, selection=(plan.metric, plan.mode),
                            early_stop=plan.stopper, loss_fn=plan.loss_fn, extra_metrics=plan.extra_metrics,
                            callbacks=callbacks)
    for message in bundle.report.warnings:  # printed when the data were read; kept in the run's events
        trainer.log.event("data_warning", message=message)
    if plan.is_main:
        procs = f", {trainer.world} processes" if trainer.world > 1 else ""
        print(f"run folder: {run_dir}  (precision {trainer.precision}{procs}, {len(bundle.train)} train / "
              f"{len(bundle.validation)} validation samples, {trainer.total_steps} steps)", flush=True)
    feature_cache = maybe_cache_features(rec, task, trainer)  # swaps in cached trunk outputs when it may
    if plan.is_main and (feature_cache["enabled"] or rec.finetune.strategy in ("feature_extraction", "partial")):
        print(describe(feature_cache), flush=True)
    return Built(model, peft_model, trainer, checkpointing, feature_cache)


def fit(rec: BaseRecipe, plan: Plan, built: Built, run_dir: Path, resumed: bool):
    """The starting model's scores (kept in the run folder for a resume), then the training loop."""
    trainer = built.trainer
    before = retention_before(plan.retention, trainer, run_dir, resumed=resumed, is_main=plan.is_main)
    samples = samples_before(rec, plan.task, task_model(trainer, built.peft_model), plan.bundle, run_dir,
                             resumed=resumed, is_main=plan.is_main)
    state = trainer.fit(resume=resumed)
    return state, Start(before, samples)


def final_evaluation(rec: BaseRecipe, plan: Plan, built: Built, state, start: Start, t_start: float):
    """The best checkpoint on validation and test (every process takes its shard), groups, retention,
    diagnosis, parameters, timing and memory; returns the metrics and the test (predictions, references)."""
    import torch

    from .evaluation.diagnosis import diagnose

    trainer, bundle = built.trainer, plan.bundle
    trainer.load_best()
    t_eval = time.perf_counter()
    val_metrics, _, _ = trainer.evaluate(bundle.validation)
    metrics: dict[str, Any] = {"validation": val_metrics}
    test_outputs = None
    if bundle.test is not None:
        test_metrics, preds, refs = trainer.evaluate(bundle.test)
        metrics["test"] = test_metrics
        test_outputs = (preds, refs)
    if state.baseline is not None:
        metrics["baseline_test"] = state.baseline
    if plan.groups_from is not None:
        metrics["groups"] = group_evaluation(rec, plan.task, trainer.evaluate, plan.groups_from)
    if plan.retention is not None:
        from .evaluation.retention import compare

        metrics["retention"] = compare(plan.retention.source, start.retention, plan.retention.run(trainer))
    eval_seconds = time.perf_counter() - t_eval
    metrics.update(best_step=state.best_step, selected_by=plan.metric, stop_reason=state.stop_reason,
                   steps=state.step, epochs_completed=state.epoch)
    if trainer.budget:  # train.time_budget_minutes: the plan on this machine, and each re-plan that led to it
        chosen = trainer.total_steps
        metrics["time_budget"] = {"minutes": rec.train.time_budget_minutes, "recipe_steps": trainer.recipe_steps,
                                  "chosen_steps": chosen, "epochs": round(chosen / trainer.updates_per_epoch, 3),
                                  "replans": state.budget_history}
    metrics["diagnosis"] = diagnose(state.history, plan.metric, plan.mode, strategy=rec.finetune.strategy,
                                    peft=rec.finetune.peft is not None)  # read from the run's own curves
    trainable, total = peft_lib.trainable_share(built.model)
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
    metrics["memory"] = {**peak_memory(trainer.accelerator.device), "gradient_checkpointing": built.checkpointing}
    metrics["feature_cache"] = built.feature_cache
    return metrics, test_outputs


def write_outputs(rec: BaseRecipe, plan: Plan, built: Built, run_dir: Path, metrics: dict[str, Any], state,
                  start: Start, test_outputs) -> None:
    """On the main process: samples, the task's report extras and extra evaluation sets, the model
    folder and its card, metrics.json, plots and report.md. Adds to ``metrics`` what it scores."""
    from .loop.feature_cache import describe

    task, bundle, trainer = plan.task, plan.bundle, built.trainer
    trained = task_model(trainer, built.peft_model)
    samples = sample_outputs(task, trained, bundle, run_dir, "after")
    if samples:  # a task that shows samples (SampleOutputs) and had some: before/after scores
        metrics["samples"] = {**({"before": start.samples} if start.samples else {}), "after": samples}
    extras: list[str] = []
    if isinstance(task, ReportsExtras) and test_outputs is not None:
        extras += task.report_extras(run_dir, "test", *test_outputs, bundle.test)
    if isinstance(task, ExtraEvaluation):  # evaluation sets beyond validation/test (ASR: codec, noise)
        results, blocks = task.extra_evaluations(trained, run_dir)
        if results:
            metrics["eval_sets"] = results
        extras += blocks
    model_dir = run_dir / MODEL_DIR
    # A PEFT run saves the adapter only (peft's wrapper writes adapter_config + adapter weights).
    task.save_pretrained(built.peft_model or trainer.accelerator.unwrap_model(trainer.model), model_dir)
    if built.peft_model is not None and getattr(built.model, "config", None) is not None:
        # The base's config (architecture, label names) beside the adapter documents what it adapts.
        built.model.config.save_pretrained(model_dir)
    write_model_card(model_dir, recipe_name=rec.name, task=rec.task, base_model=rec.model.name,
                     base_origin=asset_origin(rec.model.name), data_source=rec.data.source,
                     data_origin=asset_origin(rec.data.source), metrics=metrics, recipe_yaml=dump_recipe(rec),
                     **model_card_info(task))
    write_json(run_dir / METRICS_FILE, metrics)
    if "groups" in metrics:
        from .evaluation.groups import fairness_png

        fairness_png(metrics["groups"], run_dir / GROUP_RATES_FILE)
    curves = learning_curves_png(state.history, plan.metric, run_dir / LEARNING_CURVES_FILE)
    write_report(run_dir, recipe_name=rec.name, task=rec.task, model_name=rec.model.name, metrics=metrics,
                 data_report=bundle.report.to_dict(), extras=extras, curves=curves,
                 timing={**metrics["timing"], **metrics["memory"], "feature_cache": describe(built.feature_cache)})


def train(recipe: str | Path | BaseRecipe, overrides: dict[str, Any] | list[str] | None = None, *,
          resume: str | Path | None = None, callbacks: list[Callable] = (), **kw_overrides: Any) -> RunResult:
    """Train from a recipe (file, shipped name or object) and return the run's metrics and folder.

    Overrides use dotted keys: ``train(r, {"train.lr": 3e-5})`` or ``train(r, **{"train.lr": 3e-5})``.
    ``resume=RUN_DIR`` continues an interrupted run from its last checkpoint. Under ``torchrun`` every
    process calls this; the main process writes the run folder and every process returns the result.
    """
    t_start = time.perf_counter()
    rec = resolve_recipe(recipe, overrides, kw_overrides, resume)
    plan = prepare(rec)
    run_dir = open_run_folder(rec, plan, resume)
    built = build(rec, plan, run_dir, list(callbacks))
    state, start = fit(rec, plan, built, run_dir, resumed=resume is not None)
    metrics, test_outputs = final_evaluation(rec, plan, built, state, start, t_start)
    if plan.is_main:
        write_outputs(rec, plan, built, run_dir, metrics, state, start, test_outputs)
    built.trainer.log.close()
    built.trainer.accelerator.wait_for_everyone()
    return RunResult(run_dir=run_dir, metrics=metrics)


def evaluate(run_dir: str | Path, data: str | None = None, batch_size: int | None = None,
             adapter: str | None = None, groups: list[str] | None = None) -> dict[str, Any]:
    """Evaluate a finished run's model on its test split, or on another file/folder (``data``);
    ``adapter`` picks one of several adapters saved in the run's model folder. ``groups`` names
    columns of that table (or of the run's group table): the result then has per-group metrics."""
    import torch

    from .loop.trainer import default_eval_batch_size, evaluate_model, resolve_precision

    rec, task, model = load_run(run_dir, adapter)
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

    def score(ds):
        return evaluate_model(task, peft_lib.task_model(model), ds, batch_size, device, autocast,
                              extra_metrics=user_extra_metrics(rec))

    metrics, _, _ = score(dataset)
    out = {"data": data or "test split", "samples": len(dataset), "metrics": metrics,
           "data_report": report.to_dict()}
    if groups:
        source = check_groups(rec, data, list(groups))
        out["groups"] = group_evaluation(rec, task, score, source, list(groups))
    return out
