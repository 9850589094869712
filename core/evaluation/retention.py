"""Retention: did fine-tuning keep the general-domain ability the base model had?

``eval.retention: SOURCE`` names a general-domain evaluation set. It is scored twice by the same
code: with the model as training starts (the pretrained model, strategy and adapters applied, before
any update) and with the best checkpoint after training. The change goes into ``metrics.json``
(``retention``), the report and the model card. It works for every task through the contract alone:
the set is read by the task's ``load_eval_dataset(source, label_names)`` and scored by
:func:`omnitune.core.loop.trainer.evaluate_model`, like ``omnitune eval --data``.

Two probes (``eval.retention_mode``):

- ``metrics``: the task's own metrics and loss on the set. For a language model that is the loss and
  perplexity on a held-out general corpus; for ASR the WER on general speech; for TTS the loss. For
  a classifier it is only meaningful when the starting model already has a trained head for the set's
  labels (continuing from a fine-tuned classifier): a freshly initialised head scores chance.
- ``linear_probe``: for models with a classification head. A pretrained encoder under a new head
  does not "already do" the fine-tuning task, but its features already separate many general
  distinctions. The probe reads the features the head sees (the input of the last ``nn.Linear`` of
  the task's last layer group, mean-pooled over tokens/positions), fits a logistic regression on one
  half of the set (stratified, seeded) and scores accuracy on the other half, with the starting and
  the fine-tuned model. A drop means the fine-tuned features lost that distinction. The set is read
  with its own labels (a task built on the set, ``data.labels`` unset), so it can be a different
  labelled task (e.g. topic for a sentiment model); because the task still computes its loss on the
  set, it may have at most as many classes as the model's head.

When the set's columns differ from the training data's (a plain corpus for an instruction-tuned LM),
``eval.retention_data`` gives the data-section fields to read it with, e.g.
``{prompt_template: "", response_template: "{text}"}``: the set is then read by a task built with
them (the run's label set kept in metrics mode).

``auto`` picks ``linear_probe`` for tasks with a label set whose references are class indices, and
``metrics`` otherwise.

The starting score is written to ``retention_before.json`` in the run folder before training, so a
resumed run compares against the true starting model, not against its own checkpoint.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..base.errors import RecipeError
from ..runs import RETENTION_BEFORE

BEFORE_FILE = RETENTION_BEFORE  # the run folder's name for it (core/runs.py)
MODES = ("auto", "metrics", "linear_probe")


# ----------------------------------------------------------------------------- features for the probe
def head_linear(task: Any, model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of the task's last layer group (the head): its input is the feature
    vector the classifier reads. Under peft's ``modules_to_save`` the trained copy comes last."""
    linears = [m for module in task.layer_groups(model)[-1].modules for m in module.modules()
               if isinstance(m, nn.Linear)]
    if not linears:
        raise RecipeError(f"eval.retention_mode linear_probe: task {task.name} has no Linear layer in its head")
    return linears[-1]


def pool(x: torch.Tensor) -> torch.Tensor:
    """(batch, features) from a head input of any rank: tokens/positions are mean-pooled."""
    x = x.detach().float()
    if x.ndim == 2:
        return x
    if x.ndim == 3:  # (batch, tokens, hidden)
        return x.mean(1)
    return x.flatten(2).mean(-1) if x.ndim > 3 else x.reshape(len(x), -1)


@contextmanager
def captured_features(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the pooled input of ``layer`` for every forward inside the block."""
    store: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: store.append(pool(args[0]).cpu()))
    try:
        yield store
    finally:
        handle.remove()


def probe_accuracy(features: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """Held-out accuracy of a logistic regression on ``features``: fit on one stratified half,
    scored on the other (features standardised on the fitting half)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ..base.data import stratified_split

    rest, held = stratified_split(labels, [0.5], seed)
    if len(set(labels[rest].tolist())) < 2 or len(held) == 0:
        raise RecipeError("eval.retention: the probe set needs at least two classes with two samples each")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(features[rest], labels[rest])
    return {"probe_accuracy": float((clf.predict(features[held]) == labels[held]).mean()),
            "probe_fit_samples": int(len(rest)), "probe_test_samples": int(len(held))}


def _is_class_index(refs: list) -> bool:
    return bool(refs) and all(isinstance(r, (int, np.integer)) and not isinstance(r, bool) for r in refs)


# ----------------------------------------------------------------------------- scoring
def score(task: Any, model: nn.Module, dataset: Any, evaluate: Callable[[Any], tuple[dict, list, list]],
          mode: str, seed: int) -> dict[str, Any]:
    """One retention score of ``model`` on ``dataset``: ``evaluate(dataset) -> (metrics, preds, refs)``
    is the run's evaluation (the trainer's, or evaluate_model's); ``mode`` is metrics/linear_probe.

    Under several processes ``evaluate`` gathers predictions, but the hook sees only this
    process's shard: the probe then gathers the features by sample index as evaluate_model shards."""
    if mode == "metrics":
        metrics, _, _ = evaluate(dataset)
        return {"mode": "metrics", "samples": len(dataset), "metrics": _plain(metrics)}
    layer = head_linear(task, model)
    with captured_features(layer) as store:
        _, _, refs = evaluate(dataset)
    feats = torch.cat(store).numpy() if store else np.zeros((0, 0))
    feats = _gather_rows(feats, len(dataset))
    if not _is_class_index(refs):
        raise RecipeError(f"eval.retention_mode linear_probe: task {task.name}'s references are not class "
                          "indices (one label per sample); use retention_mode: metrics")
    result = probe_accuracy(feats, np.asarray(refs), seed)
    return {"mode": "linear_probe", "samples": len(dataset), "feature_dim": int(feats.shape[1]),
            "metrics": result}


def _gather_rows(feats: np.ndarray, n: int) -> np.ndarray:
    """This process's rows (samples rank, rank+world, ...) -> all n rows in dataset order."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return feats
    from ..loop.trainer import gather_objects

    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    mine = list(zip(range(rank, n, world), feats))
    rows = sorted(gather_objects(mine, world), key=lambda r: r[0])
    return np.stack([r[1] for r in rows])


def pick_mode(mode: str, task: Any) -> str:
    """``auto`` -> linear_probe for tasks with a label set, metrics otherwise."""
    if mode not in MODES:
        raise RecipeError(f"eval.retention_mode: {mode!r} is not one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "linear_probe" if task.label_names else "metrics"


def _plain(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def compare(source: str, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The ``retention`` entry of metrics.json: both scores and after - before per metric (for
    ``loss``/``perplexity`` a positive change is a loss of ability; for accuracies, a gain)."""
    b, a = before["metrics"], after["metrics"]
    compared = [k for k in b if k in a and (k == "probe_accuracy" or not k.startswith("probe_"))]
    change = {k: a[k] - b[k] for k in compared if math.isfinite(a[k]) and math.isfinite(b[k])}
    return {"source": source, "mode": before["mode"], "samples": before["samples"],
            "before": b, "after": a, "change": change}


def retention_md(ret: dict[str, Any]) -> str:
    """A markdown table of the retention entry: metric, before, after, change."""
    how = ("linear probe on the features the head reads (logistic regression, held-out half)"
           if ret["mode"] == "linear_probe" else "the task's metrics")
    lines = [f"General-domain set `{ret['source']}` ({ret['samples']} samples), scored by {how} with the "
             "starting model (before any update) and with the fine-tuned model.", "",
             "| metric | before | after | change |", "|---|---|---|---|"]
    for k, d in ret["change"].items():
        lines.append(f"| {k} | {ret['before'][k]:.4f} | {ret['after'][k]:.4f} | {d:+.4f} |")
    return "\n".join(lines)


class RetentionCheck:
    """The retention set of a run, loaded once (before the run folder exists, so a bad source fails
    first), and scored with whatever model the trainer holds when :meth:`run` is called."""

    def __init__(self, source: str, mode: str, task: Any, make_probe_task: Callable[[], Any], seed: int,
                 metrics_task: Any = None) -> None:
        """``task`` is the run's task; ``metrics_task`` (default: ``task``) reads the set in metrics
        mode, with the run's label set; ``make_probe_task()`` builds the task reading it with its own labels."""
        self.source, self.seed = source, seed
        self.mode = pick_mode(mode, task)
        # The probe reads the set with its own labels; the metrics mode with the model's label set.
        self.task = make_probe_task() if self.mode == "linear_probe" else (metrics_task or task)
        labels = None if self.mode == "linear_probe" else task.label_names
        self.dataset, self.report = self.task.load_eval_dataset(source, labels)

    def run(self, trainer: Any) -> dict[str, Any]:
        from ..loop.trainer import evaluate_model

        # evaluate_model puts the model in eval mode; fit() sets its own train mode when it starts.
        model = trainer.accelerator.unwrap_model(trainer.model)

        def evaluate(dataset):
            return evaluate_model(self.task, model, dataset, trainer.cfg.eval_batch, trainer.accelerator.device,
                                  trainer.accelerator.autocast, trainer.cfg.num_workers)

        try:
            return score(self.task, model, self.dataset, evaluate, self.mode, self.seed)
        except (RuntimeError, IndexError) as exc:  # e.g. more probe classes than the head has
            raise RecipeError(f"eval.retention {self.source}: scoring failed ({type(exc).__name__}: {exc}); "
                              "a linear probe set may have at most as many classes as the model's head") from None


# ----------------------------------------------------------------------------- persistence
def save_before(run_dir: Path, before: dict[str, Any]) -> None:
    (Path(run_dir) / BEFORE_FILE).write_text(json.dumps(before, indent=1))


def load_before(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / BEFORE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
