"""The task contract: what a domain implements, and nothing more.

A task builds the model and the datasets, collates a batch, computes the loss, turns outputs into
predictions and metrics, and names the model's ordered layer groups (input to output; the last
group is the head). Freezing, gradual unfreezing, layer-wise LR decay, checkpointing, evaluation
and reports are the core's, and work for every task through this contract.

A task class is registered under a name in the ``omnitune.tasks`` entry-point group and is built
by the core as ``TaskClass(model=recipe.model, data=recipe.data, regularization=..., seed=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from ..base.exporting import ExportSpec
from ..base.recipe import (DataConfig, HasObjective, ModelConfig, ReadsOptionalFields,  # noqa: F401 (re-export)
                           RegularizationConfig)


@dataclass
class LayerGroup:
    """A named group of modules; groups are ordered from the input to the output."""

    name: str
    modules: list[nn.Module]

    def parameters(self) -> Iterator[nn.Parameter]:
        seen: set[int] = set()
        for module in self.modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p


@dataclass
class DataReport:
    """What loading and cleaning did, split by split; nothing is dropped without a count here."""

    source: str
    rows_read: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few offending items
    rows_kept: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def drop(self, split: str, reason: str, count: int, examples: Sequence[str] = ()) -> None:
        if count:
            by_reason = self.dropped.setdefault(split, {})
            by_reason[reason] = by_reason.get(reason, 0) + count
            kept = self.examples.setdefault(reason, [])
            kept.extend(str(e) for e in examples[: max(0, 5 - len(kept))])

    def warn(self, message: str) -> None:
        """A problem the user should see now (e.g. over 5% of a split truncated): printed to stderr,
        kept in the notes with a ``warning:`` prefix, and logged as a ``data_warning`` event."""
        import sys

        message = message if message.startswith("warning: ") else f"warning: {message}"
        self.notes.append(message)
        print(message, file=sys.stderr, flush=True)

    @property
    def warnings(self) -> list[str]:
        return [n for n in self.notes if n.startswith("warning: ")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "dropped": self.dropped,
            "examples": self.examples,
            "rows_kept": self.rows_kept,
            "label_counts": self.label_counts,
            "notes": self.notes,
        }


@dataclass
class DataBundle:
    """The datasets a task built, with what the core needs to batch and report them."""

    train: torch.utils.data.Dataset
    validation: torch.utils.data.Dataset
    test: torch.utils.data.Dataset | None
    report: DataReport
    label_names: list[str] | None = None
    # Per-sample lengths of the training set (e.g. token counts) for length-grouped batches.
    train_lengths: list[int] | None = None


@runtime_checkable
class Task(Protocol):
    """The required contract. See text/classification.py for a complete implementation.

    Everything else a task may do is one of the small optional protocols below; the core checks them
    with ``isinstance(task, Protocol)`` and never looks a method up by name."""

    name: ClassVar[str]
    ModelConfig: ClassVar[type[ModelConfig]]
    DataConfig: ClassVar[type[DataConfig]]
    # The metric that picks the best checkpoint by default, and whether higher is better.
    main_metric: ClassVar[str]
    main_metric_mode: ClassVar[str]  # "max" or "min"
    # The class names the model's head is sized for (None for tasks without a label set): declared,
    # restored from a saved model, or resolved from the training data by resolve_labels().
    label_names: list[str] | None

    def __init__(
        self, *, model: ModelConfig, data: DataConfig, regularization: RegularizationConfig, seed: int
    ) -> None: ...

    def resolve_labels(self) -> list[str] | None:
        """Fix the label set the head is sized for, once: ``data.labels``, else what restore()
        read, else the labels of the training source (reading labels only). build_model and
        build_datasets both call it, so neither has to run first. None without a label set."""

    def restore(self, model_dir: Path) -> None:
        """Read back from a folder written by save_pretrained (a full model or an adapter) what the
        task learnt from the training data: label names, tokenizer/processor, preprocessing. After
        it, build_model() rebuilds the trained architecture with no training data at hand."""

    def build_model(self) -> nn.Module:
        """The pretrained model (or random init when model.pretrained is False), head sized."""

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """Ordered groups, input to output, covering every parameter; the last is the head."""

    def build_datasets(self) -> DataBundle:
        """Load, clean, split (seeded) and prepare the data; raise DataError naming the problem."""

    def load_eval_dataset(self, source: str, label_names: list[str] | None) -> tuple[Any, DataReport]:
        """A whole file/folder as one evaluation set (``omnitune eval RUN --data SOURCE``), with the
        trained model's label names; cleaned and reported like training data."""

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        """Samples -> a batch of tensors (dynamic padding belongs here)."""

    def forward(self, model: nn.Module, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        """Run the model; return {"loss_sum": scalar tensor, "num_items": int or tensor, "outputs": ...}.

        ``loss_sum`` is summed over the items the loss averages over (samples; tokens for LM, ASR,
        seq2seq and token classification) and ``num_items`` counts them. The trainer divides by the
        items of the whole step (all micro-batches, all processes), and evaluation by the items of
        the split, so neither depends on how the items were batched."""

    def predict_batch(
        self, model: nn.Module, batch: dict[str, Any], outputs: dict[str, Any]
    ) -> tuple[list[Any], list[Any]]:
        """Predictions and references for one evaluation batch (outputs from forward(train=False))."""

    def compute_metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        """Metrics over a whole split; must contain main_metric."""

    def save_pretrained(self, model: nn.Module, out_dir: Path) -> None:
        """Save the model in Hugging Face layout, with its tokenizer/processor and label names. A PEFT
        wrapper (it has ``peft_config``) saves adapter-only files through its ``save_pretrained``."""

    def load_pretrained(self, model_dir: Path) -> nn.Module:
        """Load a model saved by save_pretrained (for eval and predict)."""

    def predict(self, model: nn.Module, inputs: list[str]) -> list[dict[str, Any]]:
        """Predictions for raw user inputs (texts, file paths), one dict each."""


# ---- optional capabilities --------------------------------------------------------------------
# Each is a protocol a task class may satisfy; the core asks ``isinstance(task, X)``. Results travel
# as return values: the core never reads an attribute that a task set on itself as a side effect.


# HasObjective (a task with its own ``finetune`` fields, ``FinetuneConfig: ClassVar[type]``) is
# declared in core/base/recipe.py, beside the section it extends, and imported above.


@runtime_checkable
class ReportsExtras(Protocol):
    def report_extras(
        self, out_dir: Path, split: str, predictions: list[Any], references: list[Any], dataset: Any
    ) -> list[str]:
        """Write task-specific plots/tables (confusion matrix, error analysis) into out_dir and
        return markdown blocks for the run report."""


@runtime_checkable
class ExtraEvaluation(Protocol):
    def extra_evaluations(self, model: nn.Module, out_dir: Path) -> tuple[dict[str, Any], list[str]]:
        """Score evaluation sets beyond validation/test (ASR: codec and noise conditions) with the
        trained ``model``, after the final evaluation, on the main process. Returns the results
        (metrics.json ``eval_sets``) and markdown blocks for report.md."""


@runtime_checkable
class SampleOutputs(Protocol):
    """For tasks whose outputs are judged as samples (synthesised speech, generated images)."""

    def sample_outputs(self, model: nn.Module, dataset: Any, out_dir: Path, stage: str) -> dict[str, float]:
        """Write what ``model`` makes of a few held-out samples of ``dataset`` (the test split, else
        validation) under ``out_dir`` (the run folder), named by ``stage``, and return their scores
        ({} when there is nothing to show). Called on the main process, RNG-neutral, with the starting
        model (stage "before", with eval.baseline, before the first update; kept in the run folder so a
        resumed run does not score again) and the final model (stage "after", before report_extras).
        The scores go in metrics.json as ``samples: {"before": .., "after": ..}`` and in report.md."""


@runtime_checkable
class MetricInputs(Protocol):
    """For user metrics (eval.extra_metrics); without it they get what predict_batch returned."""

    def metric_inputs(self, predictions: list, references: list) -> tuple[list, list]:
        """Predictions and references as plain values (e.g. label indices)."""


@runtime_checkable
class CrossValidatable(Protocol):
    """For tasks whose data are files rather than table rows (core/studies/cv.py, curve.py)."""

    def cv_rows(self) -> tuple[Any, str | None]:
        """The source as manifest rows (a pandas DataFrame) this task reads back from a CSV (absolute
        paths + label or transcript column), and the column to stratify folds by (None: unstratified)."""


@runtime_checkable
class MultiOptimizer(Protocol):
    """For tasks that train with several optimisers (a GAN's discriminator and generator)."""

    def optimizer_parts(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """Every trained parameter in exactly one part, in step order (e.g. discriminator, then
        generator). The trainer gives each part its own copy of the recipe's optimiser and schedule,
        runs ``forward(model, batch, train=True, part=name)`` for each part in turn within one
        optimiser step (the parts see the same batch dict: a part may leave tensors in it for the
        next), and checkpoints every part's state. Evaluation calls forward without ``part``."""


@runtime_checkable
class InnerLoop(Protocol):
    """For tasks that take several optimiser steps on one batch of generated samples (PPO).

    Each collated batch becomes ``inner_steps_per_batch`` optimiser steps, each with its own schedule
    step, clipping, hooks and log line; the schedule, ``max_steps``, the time budget and
    ``eval_every`` count these steps, in whole batches. Evaluation, checkpoints and stopping wait for
    a batch's last inner step, so a resume (even after kill -9) starts at a batch boundary and rolls
    out again from the same weights and RNG state. ``train.grad_accum`` must be 1 (each inner batch
    is one whole step), with one process and no ``train.loss``."""

    # How many batches inner_batches returns, fixed before training (the schedule plans on it).
    inner_steps_per_batch: int

    def inner_batches(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Turn one collated batch (on the device) into the batches of the inner optimiser steps
        (PPO: roll out and score once, without gradients, then ``epochs x minibatches`` batches).
        Called in train mode under autocast; switching to eval mode and ``torch.no_grad`` for a
        rollout is the task's business (the trainer restores train mode after). The trainer runs
        ``forward(model, inner, train=True)`` + backward + an optimiser step on each, in order."""


@runtime_checkable
class FeatureCacheable(Protocol):
    """For the frozen-trunk feature cache (core/loop/feature_cache.py, train.cache_features): with the
    bottom ``depth`` layer groups frozen, their outputs are computed once per sample and the rest
    trains from them. A task without these methods is simply never cached."""

    # Whether validation is cached too: False when evaluation needs more than the cached values
    # (texts to decode); then it runs the whole model.
    feature_cache_eval: ClassVar[bool]

    def frozen_features(self, model: nn.Module, batch: dict, depth: int) -> dict[str, torch.Tensor] | None:
        """For a collated batch (model in eval mode, no grad): the outputs of the first ``depth``
        groups plus whatever forward_features needs (labels, sample indices), each with the batch on
        dim 0 and the same shape for every sample, or a ``feature_cache.Ragged`` (values and lengths)
        for a sequence kept without its padding. None when the model cannot be split there."""

    def forward_features(self, model: nn.Module, batch: dict, depth: int, train: bool) -> dict:
        """What ``forward`` returns, from a batch of stacked frozen_features values; the same loss
        and, in train mode, the same random draws (dropout) as forward above the split."""


@runtime_checkable
class FeatureCacheTrainSet(Protocol):
    def feature_cache_train_set(self, bundle: DataBundle) -> tuple[torch.utils.data.Dataset, list[str]]:
        """The training set without input randomness (augmentation, mixing), and a line for each thing
        that turned off ([] when there was none: then the cache needs no cache_features: true)."""


# ---- what a task declares about itself (export, model card, metrics) ------------------------------
# A domain's terminal commands (e.g. `omnitune chat`) are not task declarations: the domain adds them
# to the CLI through the ``omnitune.commands`` entry-point group.


@runtime_checkable
class Exportable(Protocol):
    """A task that can be exported to ONNX (``omnitune export``, core/deploy): it says which graphs,
    with which inputs, outputs and dynamic axes, and which runtime traces and runs them. A task
    without it gets a one-line error naming the tasks that export."""

    def export_spec(self) -> ExportSpec:
        """The :class:`~omnitune.core.base.exporting.ExportSpec`: runtime ``named`` (Hugging Face
        heads), ``tensor`` (one tensor in), ``encoder-decoder`` (with ``decoding`` naming the task
        method that gives greedy decoding's settings) or ``waveform`` (with ``module`` naming the
        task method that builds the generator to trace); ``int8`` how (or whether) to quantise."""


@runtime_checkable
class ModelCardInfo(Protocol):
    """The Hugging Face model-card metadata for this task's models (core/evaluation/report.py).
    Without it the card has no pipeline tag and names the library "omnitune"."""

    pipeline_tag: ClassVar[str]  # e.g. "text-classification", "automatic-speech-recognition"
    card_library: ClassVar[str]  # the library that loads the saved model: "transformers", "timm", ...


@runtime_checkable
class DeclaresMetrics(Protocol):
    """Metrics this task computes that the core's registry does not already know, with directions:
    checkpoint selection and early stopping by one of them (``eval.metric``) take its direction
    (core.base.metrics.declared_metrics). A metric several tasks or recipes share belongs in the
    registry instead (the ``omnitune.metrics`` entry-point group)."""

    # core.base.metrics.Metric objects (core/base/metrics.py imports this module, not the reverse),
    # made with core.base.metrics.define_metric
    metric_definitions: ClassVar[tuple[Any, ...]]
