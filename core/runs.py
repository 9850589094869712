"""The run folder: its file names, creating one, and loading a finished run's task and model.

Every module that reads or writes a run folder takes the names from here, so a run written by one
version of omnitune is read by the next (the names are those run folders have always had)::

    RUN/
      recipe.yaml            the resolved recipe (RECIPE_FILE)
      data_report.json       what loading and cleaning did (DATA_REPORT_FILE)
      events.jsonl           the event log; tensorboard/ its curves (written by core/loop/tracking.py)
      checkpoints/last|best  what a resume needs / the best weights (written by core/loop/trainer.py)
      model/                 the best model in save_pretrained layout, or the adapter only (MODEL_DIR)
      metrics.json           final metrics (METRICS_FILE); report.md the run report (REPORT_FILE)
      samples_before.json    the starting model's sample scores (SAMPLES_BEFORE)

>>> from omnitune.core.runs import load_run
>>> recipe, task, model = load_run("runs/minilm-rotten-tomatoes-20260101-120000")  # doctest: +SKIP
"""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .adapters import peft as peft_lib
from .base import assets
from .base.errors import OmnituneError
from .base.recipe import BaseRecipe, FinetuneConfig, read_yaml, task_finetune_config, validate_recipe
from .base.registry import TASKS

RECIPE_FILE = "recipe.yaml"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
DATA_REPORT_FILE = "data_report.json"
REPORT_FILE = "report.md"
LEARNING_CURVES_FILE = "learning_curves.png"
GROUP_RATES_FILE = "group_rates.png"
SAMPLES_BEFORE = "samples_before.json"
RETENTION_BEFORE = "retention_before.json"
CHECKPOINTS_DIR = "checkpoints"  # the Trainer's Checkpointer writes "last" and "best" below it
LAST_CHECKPOINT = "last"


def last_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a resume continues from."""
    return Path(run_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_task(recipe: BaseRecipe):
    """The recipe's task, built from its sections (the task's own objective fields with them)."""
    task_cls = TASKS.get(recipe.task)
    kwargs = dict(model=recipe.model, data=recipe.data, regularization=recipe.regularization, seed=recipe.seed)
    if task_finetune_config(task_cls) is not FinetuneConfig:  # a task with its own objective fields
        kwargs["finetune"] = recipe.finetune
    return task_cls(**kwargs)


def user_extra_metrics(recipe: BaseRecipe) -> dict[str, Any]:
    """The recipe's ``eval.extra_metrics`` loaded, by name."""
    from .base.metrics import load_user_metric

    loaded = [load_user_metric(spec) for spec in recipe.eval.extra_metrics]
    return {m.name: m for m in loaded}


def asset_origin(ref: str) -> str:
    """Where a model or data reference comes from, for the model card: a bundled asset's
    description, origin and licence; any other reference as given."""
    if ref.startswith(assets.ASSET_PREFIX):
        a = assets.ASSETS.get(ref[len(assets.ASSET_PREFIX):].split("/")[0])
        return f"{a.description}; {a.origin}; licence {a.licence}"
    return ref


# ---- creating a run folder ------------------------------------------------------------------------


def new_run_dir(recipe: BaseRecipe) -> Path:
    """A new run folder, ``output.dir/output.run_name`` (default: recipe name and time); an error
    when a run already exists there."""
    name = recipe.output.run_name or f"{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(recipe.output.dir) / name
    if (run_dir / RECIPE_FILE).exists():
        raise OmnituneError(f"{run_dir}: a run already exists there; choose another output.run_name "
                            f"or resume it with `omnitune train --resume {run_dir}`")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def shared_run_dir(recipe: BaseRecipe, distributed) -> Path:
    """The main process names and creates the run folder; the others learn it from the main one
    (an error there is raised on every process, so none waits forever)."""
    if distributed.num_processes == 1:
        return new_run_dir(recipe)
    from torch.distributed import broadcast_object_list

    message: list[Any] = [None]
    if distributed.is_main_process:
        try:
            message = [str(new_run_dir(recipe))]
        except OmnituneError as exc:
            message = [exc]
    broadcast_object_list(message, src=0)
    if isinstance(message[0], Exception):
        raise message[0]
    return Path(message[0])


# ---- reading a run folder -------------------------------------------------------------------------


def load_run_recipe(run_dir: str | Path) -> BaseRecipe:
    """The validated recipe a run folder saved; an error when ``run_dir`` is not a run folder."""
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        raise OmnituneError(f"{run_dir}: not a run folder (no {RECIPE_FILE})")
    return validate_recipe(read_yaml(path), where=str(path))


def check_resumable(run_dir: str | Path) -> Path:
    """``run_dir`` when it is an interrupted run that ``--resume`` can continue (it has a last
    checkpoint), after finishing a checkpoint swap that a kill -9 may have cut."""
    from .loop.checkpoint import recover_checkpoint

    run_dir = Path(run_dir)
    recover_checkpoint(last_checkpoint(run_dir))
    if not (run_dir / RECIPE_FILE).is_file() or not last_checkpoint(run_dir).is_dir():
        raise OmnituneError(f"{run_dir}: not a run folder with a checkpoint to resume")
    return run_dir


def quantize_base(recipe: BaseRecipe, task, model) -> None:
    """QLoRA's base (``finetune.peft.quantize: 4bit``): every Linear outside the head to 4-bit, in
    place. Training and reloading an adapter both go through here, so the adapter is reattached to
    a base quantised exactly as the one it was trained on. Needs a CUDA GPU (a clear error without)."""
    if recipe.finetune.peft is None or recipe.finetune.peft.quantize == "none":
        return
    peft_lib.check_quantization(recipe.finetune.peft.quantize)
    peft_lib.quantize_4bit(model, task.layer_groups(model)[-1].modules)


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


def load_run(run_dir: str | Path, adapter: str | None = None):
    """(recipe, task, model) of a finished run, from the run folder alone: the saved recipe and the
    saved model folder (labels, tokenizer/processor, config). The training data is not read.
    ``adapter`` picks one of several adapters saved in the model folder."""
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file():
        raise OmnituneError(f"{run_dir}: not a run folder (no {RECIPE_FILE})")
    if not (run_dir / MODEL_DIR).is_dir():
        raise OmnituneError(f"{run_dir}: the run has no saved model yet (did it finish?)")
    rec = load_run_recipe(run_dir)
    task = build_task(rec)
    if peft_lib.list_adapters(run_dir / MODEL_DIR):
        return rec, task, load_adapter_model(rec, task, run_dir / MODEL_DIR, active=adapter)
    return rec, task, task.load_pretrained(run_dir / MODEL_DIR)
