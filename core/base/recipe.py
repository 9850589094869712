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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from ..base.errors import RecipeError
from ..base.registry import TASKS


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ----------------------------------------------------------------------------- model / data bases
class ModelConfig(Section):
    """What every task's ``model`` section has. Tasks subclass it to add their own fields."""

    # A Hub id ("sentence-transformers/all-MiniLM-L6-v2"), a local folder, or "asset:NAME".
    name: str
    revision: str | None = None
    # False builds the same architecture with random weights: the from-scratch baseline.
    pretrained: bool = True


class DataConfig(Section):
    """What every task's ``data`` section has. Tasks subclass it to add their own fields."""

    # A local file or folder, "hub:DATASET[/CONFIG]" or "asset:NAME".
    source: str
    # Separate files for the splits, when the source is not one table (keys: train/validation/test).
    validation_source: str | None = None
    test_source: str | None = None
    label_column: str = "label"
    # The declared label set; None takes the sorted labels seen in the training data.
    labels: list[str] | None = None
    # Rows whose label is not in `labels`: "error" stops the run naming them, "drop" counts them
    # in the data report and drops them.
    unknown_labels: Literal["error", "drop"] = "error"
    drop_duplicates: bool = True
    # Cap on training rows (after cleaning, before splitting off nothing): a quick subset.
    max_samples: int | None = Field(default=None, gt=0)
    max_eval_samples: int | None = Field(default=None, gt=0)
    # Shares used when the source has no validation / test split (seeded, stratified).
    val_size: float = Field(default=0.1, gt=0, lt=1)
    test_size: float = Field(default=0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _split_sizes(self) -> "DataConfig":
        if self.val_size + self.test_size >= 1:
            raise ValueError("val_size + test_size must be below 1")
        return self


# ----------------------------------------------------------------------------- core sections
class PeftSettings(Section):
    """Parameter-efficient fine-tuning (``finetune.peft``): LoRA/IA3/QLoRA through the peft
    library, bottleneck adapters through core."""

    # lora: low-rank updates of the target layers. ia3: learned rescaling vectors (fewer
    # parameters, usually a little below LoRA). bottleneck: small residual MLPs inserted after
    # layers (Houlsby adapters); they add layers, so they cannot be merged into the base.
    method: Literal["lora", "ia3", "bottleneck"] = "lora"
    # LoRA rank and scale (update = B @ A * alpha / r); r 8 / alpha 16 is the common start.
    # For bottleneck adapters r is the bottleneck width (32-64 is usual) and alpha is unused.
    r: int = Field(default=8, gt=0)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    # Module names (suffixes) to adapt; None: per architecture (LoRA: BERT query/value, Llama and
    # Whisper q_proj/v_proj, otherwise every Linear/Conv2d outside the head; bottleneck: after each
    # attention output and feed-forward output, or after each CNN stage).
    target_modules: list[str] | None = None
    # IA3 only: which target modules scale their input (feed-forward) rather than their output.
    feedforward_modules: list[str] | None = None
    # Modules trained in full beside the adapter; None: the task's head (last layer group) without
    # norms and output embeddings, i.e. a new classifier trains, an LM head tied to the embeddings does not.
    modules_to_save: list[str] | None = None
    # QLoRA: 4-bit base weights through bitsandbytes; needs a CUDA GPU.
    quantize: Literal["none", "4bit"] = "none"
    # Several adapters can live on one base model; each is saved under its name.
    adapter_name: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="after")
    def _qlora_is_lora(self) -> "PeftSettings":
        if self.quantize != "none" and self.method != "lora":
            raise ValueError(f"quantize={self.quantize!r} is QLoRA: it needs method 'lora' (method is {self.method!r})")
        return self


class FinetuneConfig(Section):
    # full: train everything. partial: freeze `freeze` globs and/or the first `freeze_layers`
    # layer groups. feature_extraction: train only the head (last layer group). gradual: start
    # from feature extraction and unfreeze one more group from the top every `unfreeze_every`.
    strategy: Literal["full", "partial", "feature_extraction", "gradual"] = "full"
    freeze: list[str] = []
    freeze_layers: int = Field(default=0, ge=0)
    # Keep BatchNorm running statistics of frozen groups fixed (eval mode during training).
    # Always on under finetune.peft: the base, statistics included, stays as pretrained.
    freeze_norm_stats: bool = False
    unfreeze_every: int = Field(default=1, gt=0)
    unfreeze_unit: Literal["epoch", "step"] = "epoch"
    # Layer-wise LR decay: group i of n trains at lr * layer_decay ** (n - 1 - i). 0.65-0.9 is usual.
    layer_decay: float | None = Field(default=None, gt=0, le=1)
    # A separate LR for the head (last layer group); None uses train.lr.
    head_lr: float | None = Field(default=None, gt=0)
    # Parameter-efficient fine-tuning (LoRA, IA3, QLoRA); None trains the model's own weights.
    peft: PeftSettings | None = None

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
    # AdamW decays only weights of rank >= 2: biases and norm parameters are excluded.
    weight_decay: float = Field(default=0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False


class SchedConfig(Section):
    name: Literal["linear", "cosine", "constant", "polynomial", "plateau"] = "linear"
    warmup_steps: int | None = Field(default=None, ge=0)
    # Share of the total optimiser steps spent warming up, when warmup_steps is not given.
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    # The LR at the end of decay, as a share of the peak.
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    power: float = Field(default=1.0, gt=0)
    # plateau: multiply the LR by `factor` after `patience` evaluations without improvement of
    # early_stopping.metric (or the task's main metric).
    factor: float = Field(default=0.5, gt=0, lt=1)
    patience: int = Field(default=1, ge=0)


class RegularizationConfig(Section):
    l1: float = Field(default=0.0, ge=0)
    # Sets the probability of every dropout module; None keeps the model's own. For fine-tuning
    # the pretrained value (usually 0.1) is a sound start.
    dropout: float | None = Field(default=None, ge=0, lt=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # Mixup / CutMix (tasks that support them, e.g. image classification): 0 disables.
    mixup_alpha: float = Field(default=0.0, ge=0)
    cutmix_alpha: float = Field(default=0.0, ge=0)
    mix_prob: float = Field(default=1.0, ge=0, le=1)
    # Exponential moving average of the weights; evaluated instead of the raw weights when set.
    ema_decay: float | None = Field(default=None, gt=0, lt=1)


class TrainConfig(Section):
    # Peak learning rate (after warmup). 2e-5..5e-5 suits BERT-base full fine-tuning; heads and
    # small models take more.
    lr: float = Field(default=5e-5, gt=0)
    epochs: int = Field(default=3, gt=0)
    # Stops after this many optimiser steps even if epochs remain.
    max_steps: int | None = Field(default=None, gt=0)
    # A training-time budget (minutes of optimiser steps, evaluation not counted). After the first
    # steps the loop measures its speed; when the planned steps would not fit, it plans fewer, so the
    # schedule still ends at its final LR, and says so (console, events, metrics.json). The run then
    # depends on the machine's speed; a resumed run keeps the steps chosen the first time.
    time_budget_minutes: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=32, gt=0)
    eval_batch_size: int | None = Field(default=None, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    # auto: bf16 autocast where the CPU or GPU supports it, else fp32.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Evaluate every N optimiser steps; None evaluates at the end of each epoch.
    eval_every: int | None = Field(default=None, gt=0)
    log_every: int = Field(default=10, gt=0)
    # Keep padding low by batching texts of similar length (shuffled groups, seeded).
    group_by_length: bool = True
    num_workers: int = Field(default=0, ge=0)
    # torch intra-op threads; None keeps torch's default (all cores).
    threads: int | None = Field(default=None, gt=0)
    save_checkpoints: bool = True
    # Recompute activations in the backward pass: less memory, about a third more compute
    # (transformers and timm models).
    gradient_checkpointing: bool = False
    # Frozen-trunk feature cache (core/feature_cache.py), for feature_extraction or partial with the
    # bottom groups frozen: compute the frozen part once and train the rest from its outputs. auto:
    # when nothing random happens before the first trained group (no dropout or batch-norm batch
    # statistics there, no train-time input augmentation); true: also when something does, turning
    # it off (the run log and metrics.json say what); false: never.
    cache_features: Literal["auto"] | bool = "auto"
    # A loss of your own instead of the task's, by import path ("my_pkg.losses:ContrastiveLoss"; a
    # class is instantiated without arguments). Called as loss(outputs, batch) with the task's
    # outputs (e.g. logits) and batch; returns a scalar mean over the batch's samples, or
    # (summed loss, item count) for a loss averaged over tokens. Checked on one batch before training.
    loss: str | None = None


class EarlyStoppingConfig(Section):
    enabled: bool = False
    # None uses the task's main metric; "loss" uses the validation loss.
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    patience: int = Field(default=3, gt=0)
    min_delta: float = Field(default=0.0, ge=0)


class EvalConfig(Section):
    # Evaluate the starting model on the test split before training (e.g. zero-shot WER).
    baseline: bool = False
    # The metric that picks the best checkpoint; None uses the task's main metric.
    metric: str | None = None
    # Whether higher is better for `metric`; None: the metric registry's direction (`omnitune
    # metrics`), or the one a user metric declares. A metric with no known direction is an error.
    mode: Literal["max", "min"] | None = None
    # More metrics computed at every evaluation: registered names, "my_pkg.metrics:f2" import paths
    # (fn(predictions, references) -> number or dict; `fn.direction = "max"` declares its direction),
    # or Hub metric names for evaluate.load (online).
    extra_metrics: list[str] = []
    # Group attributes (core/groups.py): columns of the evaluation table (sex, accent, speaker, source)
    # whose values split the test set; the report gives every metric per group value, with its count.
    groups: list[str] = []
    # The table the group metrics read; None: data.test_source, else the test table of a source folder.
    group_source: str | None = None
    # Groups with fewer samples are flagged in the report (their metrics are noisy), never hidden.
    group_min_count: int = Field(default=30, gt=0)
    # Binary classification: the label that is the "selected" outcome of the fairness view (selection
    # rate, TPR, FPR); None: the second of the model's labels (sorted labels: "1" of 0/1, ">50K").
    positive_label: str | None = None
    # Retention (core/retention.py): a general-domain set scored before and after fine-tuning.
    retention: str | None = None
    # metrics: the task's own metrics on it (LM perplexity, WER). linear_probe: accuracy of a
    # logistic regression on the features the head reads. auto: linear_probe for tasks with a label set.
    retention_mode: Literal["auto", "metrics", "linear_probe"] = "auto"
    # data-section fields for reading the retention set when its columns differ from the training
    # data's, e.g. a plain corpus for an LM: {prompt_template: "", response_template: "{text}"}.
    retention_data: dict[str, Any] = {}


class SearchParam(Section):
    """One dimension of a hyper-parameter search; the key in ``tune.space`` is a dotted recipe field."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    # Sample on a log scale (learning rates, weight decay).
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    choices: list[Any] | None = None

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
    # grid needs every parameter categorical or stepped; tpe is Bayesian (tree-structured Parzen).
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    # The budget of the whole study: several processes sharing one storage run this many in total.
    n_trials: int | None = Field(default=20, gt=0)
    # Stop starting new trials after this many seconds (a running trial finishes).
    timeout_s: float | None = Field(default=None, gt=0)
    # median: stop a trial whose intermediate validation metric is below the median of earlier
    # trials at the same step; none: run every trial to the end.
    pruner: Literal["median", "none"] = "median"
    # Trials that run unpruned before pruning starts (the median needs something to compare with).
    pruner_startup_trials: int = Field(default=2, ge=0)
    # None: sqlite:///<run folder>/study.db. Any SQLAlchemy URL lets several processes share a study.
    storage: str | None = None
    # A running trial records a heartbeat this often. One silent for two heartbeats (its process
    # was killed hard: kill -9, out of memory, a lost machine) is failed by the next process working
    # on the study, and its parameters run again. None: no heartbeat.
    heartbeat_s: int | None = Field(default=60, gt=0)


class OutputConfig(Section):
    dir: str = "runs"
    # None: "<recipe name>-<timestamp>".
    run_name: str | None = None


class BaseRecipe(Section):
    name: str
    description: str = ""
    task: str
    seed: int = 42
    model: ModelConfig
    data: DataConfig
    finetune: FinetuneConfig = FinetuneConfig()
    optim: OptimConfig = OptimConfig()
    sched: SchedConfig = SchedConfig()
    regularization: RegularizationConfig = RegularizationConfig()
    train: TrainConfig = TrainConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _cross_section(self) -> "BaseRecipe":
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
    return create_model(
        f"Recipe[{task_name}]",
        __base__=BaseRecipe,
        model=(task_cls.ModelConfig, ...),
        data=(task_cls.DataConfig, ...),
        finetune=(finetune_cls, finetune_cls()),
    )


def task_finetune_config(task_cls: type) -> type[FinetuneConfig]:
    """The ``finetune`` section of a task's recipes: the core's, or a subclass the task declares as
    ``FinetuneConfig`` to add its own training objective fields (e.g. ``objective: dpo``, ``beta``)."""
    declared = getattr(task_cls, "FinetuneConfig", FinetuneConfig)
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
        parts.append(f"{field}: {msg}")
    return f"{where}: " + "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-5"`` -> (["train", "lr"], 3e-5). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=3e-5")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Set dotted keys in a raw recipe mapping; accepts ["a.b=1"] or {"a.b": 1}."""
    pairs = [parse_override(o) for o in overrides] if isinstance(overrides, list) else [
        (k.split("."), v) for k, v in overrides.items()
    ]
    for path, value in pairs:
        node = raw
        for key in path[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"override {'.'.join(path)}: {key!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise RecipeError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    return raw


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


def shipped_recipes_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("omnitune.recipes")))


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a shipped recipe such as ``text/minilm-rotten-tomatoes``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes_dir() / f"{str(name_or_path).removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise RecipeError(f"{name_or_path}: recipe file not found (nor a shipped recipe; see `omnitune recipes`)")


def load_recipe(
    name_or_path: str | Path, overrides: dict[str, Any] | list[str] | None = None
) -> BaseRecipe:
    """Read, override and validate a recipe file (or shipped recipe name)."""
    path = resolve_recipe_path(name_or_path)
    raw = apply_overrides(read_yaml(path), overrides or {})
    return validate_recipe(raw, where=str(path))


def list_shipped_recipes() -> list[tuple[str, str]]:
    """(name, description) of every shipped recipe, e.g. ("text/minilm-rotten-tomatoes", "...")."""
    root = shipped_recipes_dir()
    out = []
    for path in sorted(root.glob("*/*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        out.append((f"{path.parent.name}/{path.stem}", str(raw.get("description", "")).strip()))
    return out


def dump_recipe(recipe: BaseRecipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
