"""The public Python API: train, evaluate, predict, export, and the studies, from a recipe.

A thin facade: the run folder is core/runs.py's, recipe sections become the components' arguments
in core/components.py, ``train``/``evaluate`` run as named stages in core/pipeline.py, and the
studies live in core/studies/. The names here stay importable for code written against them.

>>> import omnitune
>>> result = omnitune.train("text/minilm-rotten-tomatoes", **{"train.epochs": 1})  # doctest: +SKIP
>>> result.metrics["test"]["accuracy"], result.run_dir  # doctest: +SKIP
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .adapters import peft as peft_lib
from .base.recipe import BaseRecipe, validate_recipe  # noqa: F401  (re-exported: tests build recipes here)
# The facade's names, defined where they belong: the run folder (runs), recipe sections -> components
# (components), and train / evaluate as named stages (pipeline).
from .components import (as_recipe, build_peft_model, build_trainer, check_groups, early_stopping,  # noqa: F401
                         group_evaluation, peft_kwargs, process_state, retention_check, selection, user_loss_fn)
from .pipeline import (RunResult, evaluate, peak_memory, retention_before, sample_outputs,  # noqa: F401
                       samples_before, train)
from .runs import (MODEL_DIR, RECIPE_FILE, SAMPLES_BEFORE, build_task, load_adapter_model,  # noqa: F401
                   load_run, quantize_base, seed_everything, user_extra_metrics)

__all__ = [
    "train", "evaluate", "predict", "export", "predict_onnx", "tune", "cross_validate", "curve", "merge_adapter",
    "as_recipe", "validate_recipe", "RunResult", "load_run", "build_task", "seed_everything", "MODEL_DIR",
    "RECIPE_FILE", "SAMPLES_BEFORE", "build_peft_model", "build_trainer", "load_adapter_model", "quantize_base",
    "selection", "early_stopping", "user_extra_metrics", "user_loss_fn", "peft_kwargs", "process_state",
    "check_groups", "group_evaluation", "retention_check", "retention_before", "sample_outputs", "samples_before",
    "peak_memory",
]

# ``load_run`` was this module's ``_load_run`` before core/runs.py owned the run folder; code and
# scripts written then keep working.
_load_run = load_run


def merge_adapter(run_dir: str | Path, out_dir: str | Path, adapter: str | None = None) -> Path:
    """Fold one adapter of a PEFT run (or adapter library) into the base weights and save the plain
    model in the task's layout (loads without peft, as a full fine-tuning run's model does)."""
    _, task, model = load_run(run_dir, adapter)
    task.save_pretrained(peft_lib.merge_adapter(model, adapter), Path(out_dir))
    return Path(out_dir)


def predict(run_dir: str | Path, inputs: list[str], adapter: str | None = None) -> list[dict[str, Any]]:
    """Predictions of a finished run's model for raw inputs (texts, or file paths for images/audio)."""
    _, task, model = load_run(run_dir, adapter)
    return task.predict(peft_lib.task_model(model), list(inputs))


def export(run_dir: str | Path, out_dir: str | Path | None = None, *, format: str = "onnx",
           quantize: str | None = None, adapter: str | None = None, all_adapters: bool = False, **options: Any):
    """Export a finished run's model (an adapter merged into its base first) to ONNX, check parity
    against PyTorch on the run's validation samples, optionally quantise to int8, and write the
    export report (see core/deploy/export.py); returns the export folder and its manifest.
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
    """Hyper-parameter search over the recipe's ``tune.space`` (see core/studies/tune.py); arguments given
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
    """Stratified K-fold cross-validation (see core/studies/cv.py): each fold is a full run; returns the
    per-fold test metrics and their mean and standard deviation."""
    from .studies.cv import run_cv

    rec = as_recipe(recipe, overrides)
    task = build_task(rec)
    out = Path(out_dir) if out_dir else Path(rec.output.dir) / f"{rec.name}-cv{folds}-{datetime.now():%Y%m%d-%H%M%S}"
    return run_cv(rec, folds, out, train_fn=train, main_metric=selection(rec, task)[0], task=task)


def curve(recipe: str | Path | BaseRecipe, overrides: dict[str, Any] | list[str] | None = None, *,
          sizes: str | list[int], repeats: int = 1, compare: str | list[str] = "scratch",
          out_dir: str | Path | None = None) -> dict[str, Any]:
    """Test metric against training-set size (core/studies/curve.py): pretrained vs scratch and the listed
    strategies, on nested stratified subsets; writes curve.md/.csv/.json/.png."""
    from .studies.curve import parse_sizes, parse_variants, run_curve

    rec = as_recipe(recipe, overrides)
    task = build_task(rec)
    metric, mode = selection(rec, task)
    sizes = parse_sizes(sizes) if isinstance(sizes, str) else sorted(set(sizes))
    out = Path(out_dir) if out_dir else Path(rec.output.dir) / f"{rec.name}-curve-{datetime.now():%Y%m%d-%H%M%S}"
    return run_curve(rec, task, sizes, repeats, parse_variants(compare), out, train_fn=train, metric=metric,
                     mode=mode)

