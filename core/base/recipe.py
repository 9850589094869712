"""The recipe: one typed schema for every field a run reads.

A recipe is plain YAML. The core sections (``finetune``, ``optim``, ``sched``, ``regularization``,
``train``, ``early_stopping``, ``eval``, ``output``) are declared here; the ``model`` and ``data``
sections are declared by the task (each task names its ``ModelConfig`` and ``DataConfig``
subclasses of the bases below), and :func:`recipe_class` composes the two into one pydantic model.
Unknown keys, wrong types and impossible combinations raise :class:`RecipeError` naming the file
and the dotted field. CLI overrides (``train.lr=3e-5``) are applied to the raw mapping and go
through the same validation.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from ..base.errors import RecipeError
from ..base.recipe_files import (apply_overrides, list_shipped_recipes, parse_override,  # noqa: F401 (re-export)
                                 read_yaml, resolve_recipe_path, shipped_recipes_dir)
from ..base.registry import TASKS


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated. A field's
    explanation is the docstring below it: it becomes the field's description, which `omnitune
    schema TASK` prints (tests/core/test_schema.py fails on a field without one)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(),
                              use_attribute_docstrings=True)


# ----------------------------------------------------------------------------- model / data bases
class ModelConfig(Section):
    """What every task's ``model`` section has. Tasks subclass it to add their own fields."""

    name: str
    """A Hub id ("sentence-transformers/all-MiniLM-L6-v2"), a local folder, or "asset:NAME"."""
    revision: str | None = None
    """A Hub revision (branch, tag or commit) of model.name; None: the default branch."""
    pretrained: bool = True
    """False builds the same architecture with random weights: the from-scratch baseline."""


class DataConfig(Section):
    """What every task's ``data`` section has. Tasks subclass it to add their own fields."""

    source: str
    """A local file or folder, "hub:DATASET[/CONFIG]" or "asset:NAME"."""
    validation_source: str | None = None
    """A separate file for the validation split, when the source is not one table (None: split off the
    training data, or the source folder's own)."""
    test_source: str | None = None
    """A separate file for the test split (None: split off the training data, or the source folder's own)."""
    label_column: str = "label"
    """Tasks with a label set: the column holding the label (or target value)."""
    labels: list[str] | None = None
    """Tasks with a label set: the declared labels; None takes the sorted labels seen in the training
    data."""
    unknown_labels: Literal["error", "drop"] = "error"
    """Tasks with a label set: rows whose label is not in `labels`: "error" stops the run naming them,
    "drop" counts them in the data report and drops them."""
    drop_duplicates: bool = True
    """Drop validation and test rows that duplicate a training row (counted in the data report): a model
    scored on items it trained on looks better than it is."""
    max_samples: int | None = Field(default=None, gt=0)
    """Cap on training rows (after cleaning, before splitting off nothing): a quick subset."""
    max_eval_samples: int | None = Field(default=None, gt=0)
    """Cap on validation and test rows (a seeded subset); None: all."""
    val_size: float = Field(default=0.1, gt=0, lt=1)
    """Share split off for validation when the source has no validation split (seeded, stratified)."""
    test_size: float = Field(default=0.1, gt=0, lt=1)
    """Share split off for testing when the source has no test split (seeded, stratified)."""

    @model_validator(mode="after")
    def _split_sizes(self) -> "DataConfig":
        if self.val_size + self.test_size >= 1:
            raise ValueError("val_size + test_size must be below 1")
        return self


# ----------------------------------------------------------------------------- core sections
class PeftSettings(Section):
    """Parameter-efficient fine-tuning (``finetune.peft``): LoRA/IA3/QLoRA through the peft
    library, bottleneck adapters through core."""

    method: Literal["lora", "ia3", "bottleneck"] = "lora"
    """lora: low-rank updates of the target layers. ia3: learned rescaling vectors (fewer
    parameters, usually a little below LoRA). bottleneck: small residual MLPs inserted after
    layers (Houlsby adapters); they add layers, so they cannot be merged into the base."""
    r: int = Field(default=8, gt=0)
    """LoRA rank (update = B @ A * alpha / r); r 8 with alpha 16 is the common start. Bottleneck adapters:
    the bottleneck width (32-64 is usual)."""
    alpha: float = Field(default=16.0, gt=0)
    """LoRA scale: the update is multiplied by alpha / r. Unused by IA3 and bottleneck adapters."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter's input (LoRA) or inside the bottleneck MLP."""
    target_modules: list[str] | None = None
    """Module names (suffixes) to adapt; None: per architecture (LoRA: BERT query/value, Llama and
    Whisper q_proj/v_proj, otherwise every Linear/Conv2d outside the head; bottleneck: after each
    attention output and feed-forward output, or after each CNN stage)."""
    feedforward_modules: list[str] | None = None
    """IA3 only: which target modules scale their input (feed-forward) rather than their output."""
    modules_to_save: list[str] | None = None
    """Modules trained in full beside the adapter; None: the task's head (last layer group) without
    norms and output embeddings, i.e. a new classifier trains, an LM head tied to the embeddings does not."""
    quantize: Literal["none", "4bit"] = "none"
    """QLoRA: 4-bit base weights through bitsandbytes; needs a CUDA GPU."""
    adapter_name: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")
    """Several adapters can live on one base model; each is saved under its name."""

    @model_validator(mode="after")
    def _qlora_is_lora(self) -> "PeftSettings":
        if self.quantize != "none" and self.method != "lora":
            raise ValueError(f"quantize={self.quantize!r} is QLoRA: it needs method 'lora' (method is {self.method!r})")
        return self


class FinetuneConfig(Section):
    strategy: Literal["full", "partial", "feature_extraction", "gradual"] = "full"
    """full: train everything. partial: freeze `freeze` globs and/or the first `freeze_layers`
    layer groups. feature_extraction: train only the head (last layer group). gradual: start
    from feature extraction and unfreeze one more group from the top every `unfreeze_every`."""
    freeze: list[str] = []
    """strategy partial: glob patterns of parameter names to freeze, e.g. ['bert.embeddings.*']."""
    freeze_layers: int = Field(default=0, ge=0)
    """strategy partial: freeze the first N layer groups (input side)."""
    freeze_norm_stats: bool = False
    """Keep BatchNorm running statistics of frozen groups fixed (eval mode during training).
    Always on under finetune.peft: the base, statistics included, stays as pretrained."""
    unfreeze_every: int = Field(default=1, gt=0)
    """strategy gradual: unfreeze one more layer group (from the top) every this many epochs or steps."""
    unfreeze_unit: Literal["epoch", "step"] = "epoch"
    """strategy gradual: whether unfreeze_every counts epochs or optimiser steps."""
    layer_decay: float | None = Field(default=None, gt=0, le=1)
    """Layer-wise LR decay: group i of n trains at lr * layer_decay ** (n - 1 - i). 0.65-0.9 is usual."""
    head_lr: float | None = Field(default=None, gt=0)
    """A separate LR for the head (last layer group); None uses train.lr."""
    peft: PeftSettings | None = None
    """Parameter-efficient fine-tuning (LoRA, IA3, QLoRA); None trains the model's own weights."""

    @model_validator(mode="after")
    def _combos(self) -> "FinetuneConfig":
        if self.peft is not None and self.strategy != "full":
            raise ValueError("finetune.peft sets what trains (the adapter and the head): "
                             f"keep strategy 'full' (strategy is {self.strategy!r})")
        if self.strategy != "partial" and (self.freeze or self.freeze_layers):
            raise ValueError(
                f"freeze/freeze_layers need strategy 'partial' (strategy is {self.strategy!r})"
            )
        if self.strategy == "partial" and not (self.freeze or self.freeze_layers):
            raise ValueError("strategy 'partial' needs freeze globs or freeze_layers > 0")
        return self


class OptimConfig(Section):
    name: Literal["adamw", "sgd"] = "adamw"
    """The optimiser: adamw (decoupled weight decay) or sgd (with momentum)."""
    weight_decay: float = Field(default=0.01, ge=0)
    """AdamW decays only weights of rank >= 2: biases and norm parameters are excluded."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW: decay rates of the first and second moment estimates."""
    eps: float = Field(default=1e-8, gt=0)
    """AdamW: added to the denominator for numerical stability."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """SGD: momentum factor."""
    nesterov: bool = False
    """SGD: Nesterov momentum."""


class SchedConfig(Section):
    name: Literal["linear", "cosine", "constant", "polynomial", "plateau"] = "linear"
    """LR schedule after warmup: linear or cosine decay to min_lr_ratio, constant, polynomial (power), or
    plateau (reduce when the validation metric stalls)."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Optimiser steps of linear warmup from 0 to train.lr; None: warmup_ratio of the total steps."""
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    """Share of the total optimiser steps spent warming up, when warmup_steps is not given."""
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    """The LR at the end of decay, as a share of the peak."""
    power: float = Field(default=1.0, gt=0)
    """polynomial: the exponent of the decay (1 is linear)."""
    factor: float = Field(default=0.5, gt=0, lt=1)
    """plateau: multiply the LR by `factor` after `patience` evaluations without improvement of
    early_stopping.metric (or the task's main metric)."""
    patience: int = Field(default=1, ge=0)
    """plateau: evaluations without improvement before the LR is multiplied by factor."""


# Fields that only some tasks read: regularisation a task implements in its own loss or data pipeline
# (the core applies l1, dropout and ema_decay to every task), and the label-set fields of tasks that
# classify. A task class lists those it reads as ``implemented_fields: ClassVar[frozenset[str]]``
# (dotted paths); a recipe that sets any other one to a value other than its default is refused, as
# nothing would read it.
TASK_IMPLEMENTED = ("regularization.label_smoothing", "regularization.mixup_alpha", "regularization.cutmix_alpha",
                    "regularization.mix_prob", "data.label_column", "data.labels", "data.unknown_labels")


class RegularizationConfig(Section):
    l1: float = Field(default=0.0, ge=0)
    """L1 penalty on the trained weights (its subgradient, l1 * sign(w), is added to the gradients); 0
    disables."""
    dropout: float | None = Field(default=None, ge=0, lt=1)
    """Sets the probability of every dropout module; None keeps the model's own. For fine-tuning
    the pretrained value (usually 0.1) is a sound start."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    """Share of the target probability spread over all classes (or tokens) in the training loss; 0
    disables. Only for tasks that implement it."""
    mixup_alpha: float = Field(default=0.0, ge=0)
    """Mixup: Beta(alpha, alpha) weight for blending pairs of training samples and their labels; 0
    disables. Only for tasks that implement it (`omnitune schema TASK` says which)."""
    cutmix_alpha: float = Field(default=0.0, ge=0)
    """CutMix: Beta(alpha, alpha) share of a sample's area pasted from another sample, labels mixed by
    area; 0 disables. Only for tasks that implement it."""
    mix_prob: float = Field(default=1.0, ge=0, le=1)
    """Probability that a training batch is mixed when mixup_alpha or cutmix_alpha is set (with both,
    each mixed batch picks CutMix or Mixup with even odds). Only for tasks that implement mixing."""
    ema_decay: float | None = Field(default=None, gt=0, lt=1)
    """Exponential moving average of the weights; evaluated instead of the raw weights when set."""


class TrainConfig(Section):
    lr: float = Field(default=5e-5, gt=0)
    """Peak learning rate (after warmup). 2e-5..5e-5 suits BERT-base full fine-tuning; heads and
    small models take more."""
    epochs: int = Field(default=3, gt=0)
    """Passes over the training data."""
    max_steps: int | None = Field(default=None, gt=0)
    """Stops after this many optimiser steps even if epochs remain."""
    time_budget_minutes: float | None = Field(default=None, gt=0)
    """A training-time budget (minutes of optimiser steps, evaluation not counted). The loop measures
    its speed over each window of 50 steps (one length group) and plans the steps that fit the budget
    left: fewer when it is slow, more again (up to what epochs/max_steps ask) when it speeds up, with
    the schedule going on without a jump to end at its final LR; it says so (console, events,
    metrics.json). The run then depends on the machine's speed; a resumed run keeps its plan history."""
    batch_size: int = Field(default=32, gt=0)
    """Samples per micro-batch (per process when training on several)."""
    eval_batch_size: int | None = Field(default=None, gt=0)
    """Samples per evaluation batch; None: twice batch_size."""
    grad_accum: int = Field(default=1, gt=0)
    """Micro-batches accumulated per optimiser step (effective batch = batch_size * grad_accum *
    processes)."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value before each optimiser step; None: no clipping."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 autocast where the CPU or GPU supports it, else fp32."""
    eval_every: int | None = Field(default=None, gt=0)
    """Evaluate every N optimiser steps; None evaluates at the end of each epoch."""
    log_every: int = Field(default=10, gt=0)
    """Log the training loss and LR every N optimiser steps."""
    group_by_length: bool = True
    """Keep padding low by batching texts of similar length (shuffled groups, seeded)."""
    num_workers: int = Field(default=0, ge=0)
    """DataLoader worker processes; 0 loads batches in the training process."""
    threads: int | None = Field(default=None, gt=0)
    """torch intra-op threads; None keeps torch's default (all cores)."""
    save_checkpoints: bool = True
    """Save resumable checkpoints (weights, optimiser, scheduler and RNG state) during training; false
    keeps nothing to resume from."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute
    (transformers and timm models)."""
    cache_features: Literal["auto"] | bool = "auto"
    """Frozen-trunk feature cache (core/loop/feature_cache.py), for feature_extraction or partial with the
    bottom groups frozen: compute the frozen part once and train the rest from its outputs. auto:
    when nothing random happens before the first trained group (no dropout or batch-norm batch
    statistics there, no train-time input augmentation); true: also when something does, turning
    it off (the run log and metrics.json say what); false: never."""
    loss: str | None = None
    """A loss of your own instead of the task's, by import path ("my_pkg.losses:ContrastiveLoss"; a
    class is instantiated without arguments). Called as loss(outputs, batch) with the task's
    outputs (e.g. logits) and batch; returns a scalar mean over the batch's samples, or
    (summed loss, item count) for a loss averaged over tokens. Checked on one batch before training."""


class EarlyStoppingConfig(Section):
    enabled: bool = False
    """Stop training when the metric has not improved for `patience` evaluations."""
    metric: str | None = None
    """None uses the task's main metric; "loss" uses the validation loss."""
    mode: Literal["max", "min"] | None = None
    """Whether higher is better for `metric`; None: the metric's known direction (`omnitune metrics`)."""
    patience: int = Field(default=3, gt=0)
    """Evaluations without an improvement larger than min_delta before training stops."""
    min_delta: float = Field(default=0.0, ge=0)
    """The smallest change of the metric that counts as an improvement."""


class EvalConfig(Section):
    baseline: bool = False
    """Evaluate the starting model on the test split before training (e.g. zero-shot WER)."""
    metric: str | None = None
    """The metric that picks the best checkpoint; None uses the task's main metric."""
    mode: Literal["max", "min"] | None = None
    """Whether higher is better for `metric`; None: the metric registry's direction (`omnitune
    metrics`), or the one a user metric declares. A metric with no known direction is an error."""
    extra_metrics: list[str] = []
    """More metrics computed at every evaluation: registered names, "my_pkg.metrics:f2" import paths
    (fn(predictions, references) -> number or dict; `fn.direction = "max"` declares its direction),
    or Hub metric names for evaluate.load (online)."""
    groups: list[str] = []
    """Group attributes (core/evaluation/groups.py): columns of the evaluation table (sex, accent, speaker, source)
    whose values split the test set; the report gives every metric per group value, with its count."""
    group_source: str | None = None
    """The table the group metrics read; None: data.test_source, else the test table of a source folder."""
    group_min_count: int = Field(default=30, gt=0)
    """Groups with fewer samples are flagged in the report (their metrics are noisy), never hidden."""
    positive_label: str | None = None
    """Binary classification: the label that is the "selected" outcome of the fairness view (selection
    rate, TPR, FPR); None: the second of the model's labels (sorted labels: "1" of 0/1, ">50K")."""
    retention: str | None = None
    """Retention (core/evaluation/retention.py): a general-domain set scored before and after fine-tuning."""
    retention_mode: Literal["auto", "metrics", "linear_probe"] = "auto"
    """metrics: the task's own metrics on it (LM perplexity, WER). linear_probe: accuracy of a
    logistic regression on the features the head reads. auto: linear_probe for tasks with a label set."""
    retention_data: dict[str, Any] = {}
    """data-section fields for reading the retention set when its columns differ from the training
    data's, e.g. a plain corpus for an LM: {prompt_template: "", response_template: "{text}"}."""


class SearchParam(Section):
    """One dimension of a hyper-parameter search; the key in ``tune.space`` is a dotted recipe field."""

    type: Literal["float", "int", "categorical"]
    """float or int: a range from low to high; categorical: one of choices."""
    low: float | None = None
    """float/int: the lowest value."""
    high: float | None = None
    """float/int: the highest value."""
    log: bool = False
    """Sample on a log scale (learning rates, weight decay)."""
    step: float | None = Field(default=None, gt=0)
    """float/int: sample on a grid of this spacing (needed for the grid sampler)."""
    choices: list[Any] | None = None
    """categorical: the values to choose from."""

    @model_validator(mode="after")
    def _bounds(self) -> "SearchParam":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical search parameter needs choices")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.type} search parameter needs low <= high")
        elif self.log and self.low <= 0:
            raise ValueError("log-scale search needs low > 0")
        return self


class TuneConfig(Section):
    """Hyper-parameter search (``omnitune tune``) with Optuna."""

    space: dict[str, SearchParam] = {}
    """The search space: dotted recipe fields (e.g. train.lr) mapped to their ranges."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """grid needs every parameter categorical or stepped; tpe is Bayesian (tree-structured Parzen)."""
    n_trials: int | None = Field(default=20, gt=0)
    """The budget of the whole study: several processes sharing one storage run this many in total."""
    timeout_s: float | None = Field(default=None, gt=0)
    """Stop starting new trials after this many seconds (a running trial finishes)."""
    pruner: Literal["median", "none"] = "median"
    """median: stop a trial whose intermediate validation metric is below the median of earlier
    trials at the same step; none: run every trial to the end."""
    pruner_startup_trials: int = Field(default=2, ge=0)
    """Trials that run unpruned before pruning starts (the median needs something to compare with)."""
    storage: str | None = None
    """None: sqlite:///<run folder>/study.db. Any SQLAlchemy URL lets several processes share a study."""
    heartbeat_s: int | None = Field(default=60, gt=0)
    """A running trial records a heartbeat this often. One silent for two heartbeats (its process
    was killed hard: kill -9, out of memory, a lost machine) is failed by the next process working
    on the study, and its parameters run again. None: no heartbeat."""


class OutputConfig(Section):
    dir: str = "runs"
    """The folder under which run folders are created."""
    run_name: str | None = None
    """None: "<recipe name>-<timestamp>"."""


class BaseRecipe(Section):
    name: str
    """The recipe's name; run folders are named after it."""
    description: str = ""
    """Free text; its first line is shown by `omnitune recipes`."""
    task: str
    """The registered task this recipe trains (`omnitune schema` lists them)."""
    seed: int = 42
    """Seeds data splits, shuffling, initialisation and augmentation."""
    model: ModelConfig
    """The model: which checkpoint, and the task's model settings."""
    data: DataConfig
    """The data: where it comes from, how it is read, cleaned and split."""
    finetune: FinetuneConfig = FinetuneConfig()
    """What trains: strategy (full, partial, feature extraction, gradual), layer-wise LR, PEFT."""
    optim: OptimConfig = OptimConfig()
    """The optimiser."""
    sched: SchedConfig = SchedConfig()
    """The learning-rate schedule."""
    regularization: RegularizationConfig = RegularizationConfig()
    """Regularisation: L1, dropout, label smoothing, mixing, EMA."""
    train: TrainConfig = TrainConfig()
    """The training loop: LR, epochs, batch sizes, precision, evaluation cadence."""
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    """Stopping when the validation metric stalls."""
    eval: EvalConfig = EvalConfig()
    """Evaluation: the selection metric, baseline, extra metrics, groups, retention."""
    output: OutputConfig = OutputConfig()
    """Where runs are written."""
    tune: TuneConfig = TuneConfig()
    """Hyper-parameter search (`omnitune tune`)."""
    # Which of TASK_IMPLEMENTED this recipe's task reads (set by recipe_class); None on the
    # uncomposed base, which checks nothing task-specific.
    task_implemented: ClassVar[frozenset[str] | None] = None

    @model_validator(mode="after")
    def _cross_section(self) -> "BaseRecipe":
        implemented = set(TASK_IMPLEMENTED) if self.task_implemented is None else self.task_implemented
        for path in sorted(set(TASK_IMPLEMENTED) - implemented):
            section_name, name = path.split(".")
            section = getattr(self, section_name)
            if getattr(section, name) != type(section).model_fields[name].default:
                raise ValueError(f"{path}: task {self.task!r} does not use it (nothing would read it); remove it "
                                 f"(`omnitune schema {self.task}` lists what the task reads)")
        if self.sched.name == "plateau" and self.train.eval_every is None and self.train.epochs < 2:
            raise ValueError("sched.name 'plateau' needs several evaluations (epochs >= 2 or eval_every)")
        if self.finetune.head_lr is not None and self.finetune.strategy == "feature_extraction":
            raise ValueError("finetune.head_lr has no effect with feature_extraction: set train.lr")
        return self


# ----------------------------------------------------------------------------- composition
@functools.cache
def recipe_class(task_name: str) -> type[BaseRecipe]:
    """The recipe model for a task: the core sections plus the task's model and data sections."""
    task_cls = TASKS.get(task_name)
    finetune_cls = task_finetune_config(task_cls)
    doc = {name: BaseRecipe.model_fields[name].description for name in ("model", "data", "finetune")}
    cls = create_model(
        f"Recipe[{task_name}]",
        __base__=BaseRecipe,
        model=(task_cls.ModelConfig, Field(description=doc["model"])),
        data=(task_cls.DataConfig, Field(description=doc["data"])),
        finetune=(finetune_cls, Field(default=finetune_cls(), description=doc["finetune"])),
    )
    cls.task_implemented = task_implemented(task_cls)
    return cls


def task_implemented(task_cls: type) -> frozenset[str]:
    """Which of TASK_IMPLEMENTED a task reads: its ``implemented_fields`` class attribute (none when it
    declares nothing). A recipe for the task may not set the others."""
    declared = frozenset(task_cls.implemented_fields if isinstance(task_cls, ReadsOptionalFields) else ())
    unknown = declared - set(TASK_IMPLEMENTED)
    if unknown:
        raise TypeError(f"{task_cls.__name__}.implemented_fields: {sorted(unknown)} are not among the fields only "
                        f"some tasks read ({', '.join(TASK_IMPLEMENTED)})")
    return declared


@runtime_checkable
class ReadsOptionalFields(Protocol):
    """A task that reads some of TASK_IMPLEMENTED (label smoothing, mixing, the label-set fields)."""

    implemented_fields: ClassVar[tuple[str, ...]]


@runtime_checkable
class HasObjective(Protocol):
    """A task with its own training-objective fields (``objective: dpo``, ``beta``): a subclass of
    :class:`FinetuneConfig`; the task is then also built with ``finetune=``. One of the task
    contract's optional protocols (core/base/task.py re-exports it); declared here, beside the
    section it extends, so that the recipe does not import the task contract (which imports it)."""

    FinetuneConfig: ClassVar[type]


def task_finetune_config(task_cls: type) -> type[FinetuneConfig]:
    """The ``finetune`` section of a task's recipes: the core's, or a subclass the task declares as
    ``FinetuneConfig`` to add its own training objective fields (e.g. ``objective: dpo``, ``beta``)."""
    declared = task_cls.FinetuneConfig if isinstance(task_cls, HasObjective) else FinetuneConfig
    if not (isinstance(declared, type) and issubclass(declared, FinetuneConfig)):
        raise TypeError(f"{task_cls.__name__}.FinetuneConfig must subclass core.recipe.FinetuneConfig")
    return declared


def _format_validation_error(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(recipe)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "value_error" and not e["loc"] and str(e.get("ctx", {}).get("error", "")).startswith(
                tuple(f"{name}." for name in BaseRecipe.model_fields)):
            parts.append(str(e["ctx"]["error"]))  # a cross-section check that names its field itself
            continue
        parts.append(f"{field}: {msg}")
    return f"{where}: " + "; ".join(parts)


def validate_recipe(raw: dict[str, Any], where: str = "recipe") -> BaseRecipe:
    task = raw.get("task")
    if not isinstance(task, str):
        raise RecipeError(f"{where}: task: required field is missing (known: {', '.join(TASKS.names())})")
    try:
        cls = recipe_class(task)
    except Exception as exc:  # unknown task name, or a task that fails to load
        raise RecipeError(f"{where}: task: {exc}") from None
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(_format_validation_error(err, where)) from None


def load_recipe(
    name_or_path: str | Path, overrides: dict[str, Any] | list[str] | None = None
) -> BaseRecipe:
    """Read, override and validate a recipe file (or shipped recipe name)."""
    path = resolve_recipe_path(name_or_path)
    raw = apply_overrides(read_yaml(path), overrides or {})
    return validate_recipe(raw, where=str(path))


def dump_recipe(recipe: BaseRecipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
