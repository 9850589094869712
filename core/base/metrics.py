"""The metric registry: every metric a task emits, its direction and the library that computes it.

Selection of the best checkpoint, early stopping and the plateau schedule read a metric's direction
from here (:func:`metric_mode`); a name that is not registered, or one registered without a
direction, is a :class:`RecipeError`, never a guess from the name. ``omnitune metrics`` prints the
registry. The libraries are imported when a metric is computed, so importing this module stays
cheap (the CLI lists metrics without scikit-learn or torch).

Where metrics come from: the generic ones (classification, regression, the loss, likelihoods) are
registered here; a domain's (WER, BLEU, seqeval, ...) are :class:`Metric` objects that its package
registers by name through the ``omnitune.metrics`` entry-point group (pyproject.toml), loaded when
first used; a task may also declare metrics of its own (``DeclaresMetrics.metric_definitions``,
core/base/task.py), whose directions :func:`metric_mode` honours when the run passes them in
(:func:`declared_metrics`).

>>> compute("accuracy", [1, 0, 1, 1], [1, 1, 1, 1])
0.75
>>> metric_mode("mse"), metric_mode("f1_macro")
('min', 'max')

A recipe's ``eval.extra_metrics`` entries load with :func:`load_user_metric`: ``"pkg.mod:f2"``
imports the user's function ``(predictions, references) -> float | dict[str, float]``, whose
direction is its attribute ``direction = "max"`` (or a dict, one direction per key it returns); a
registered name gives that metric; any other plain name goes to ``evaluate.load`` (Hub metrics,
online).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

from ..base.errors import RecipeError
from ..base.plugins import import_object
from ..base.registry import Registry

Direction = Literal["max", "min"]
_DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class Metric:
    """One registered metric. ``direction`` None marks a figure (a count) that nothing may select by."""

    name: str
    direction: Direction | None
    library: str
    fn: Callable[..., float]
    description: str = ""

    def __post_init__(self) -> None:
        if self.direction not in (*_DIRECTIONS, None):
            raise ValueError(f"metric {self.name!r}: direction must be 'max', 'min' or None, not {self.direction!r}")

    def __call__(self, predictions: Sequence[Any], references: Sequence[Any], **kwargs: Any) -> float:
        return self.fn(predictions, references, **kwargs)


# Domain metrics arrive through the entry-point group, one entry point per metric name.
METRICS: Registry[Metric] = Registry("metric", entry_point_group="omnitune.metrics")


def define_metric(name: str, direction: Direction | None, library: str, description: str = ""
                  ) -> Callable[[Callable[..., float]], Metric]:
    """Decorator: ``fn(predictions, references, **kwargs) -> float`` as a :class:`Metric` named
    ``name``, not registered: what a domain's ``omnitune.metrics`` entry point or a task's
    ``metric_definitions`` holds. The Metric is callable like ``fn``.

    >>> @define_metric("hits", "max", "omnitune", "number of exact hits")
    ... def hits(predictions, references):
    ...     return sum(p == r for p, r in zip(predictions, references))
    >>> hits([1, 2], [1, 3]), hits.direction
    (1, 'max')
    """
    if direction not in (*_DIRECTIONS, None):
        raise ValueError(f"metric {name!r}: direction must be 'max', 'min' or None, not {direction!r}")

    def decorator(fn: Callable[..., float]) -> Metric:
        return Metric(name, direction, library, fn, description)

    return decorator


def register_metric(name: str, direction: Direction | None, library: str, description: str = ""):
    """Decorator: register ``fn(predictions, references, **kwargs) -> float`` as metric ``name``
    in this process (a package outside omnitune may also use the ``omnitune.metrics`` group)."""
    metric = define_metric(name, direction, library, description)

    def decorator(fn: Callable[..., float]) -> Callable[..., float]:
        METRICS.register(name)(metric(fn))
        return fn

    return decorator


def list_metrics() -> list[str]:
    return METRICS.names()


def get_metric(name: str) -> Metric:
    if name not in METRICS.names():
        raise RecipeError(f"unknown metric {name!r} (known: {', '.join(list_metrics())}; "
                          "`omnitune metrics` lists them)")
    return METRICS.get(name)


def compute(name: str, predictions: Sequence[Any], references: Sequence[Any], **kwargs: Any) -> float:
    """Metric ``name`` of ``predictions`` against ``references`` (keyword arguments go to its library)."""
    return float(get_metric(name).fn(predictions, references, **kwargs))


# ---- scikit-learn: classification (single- and multi-label) and regression ----------------------

def _np(values):
    import numpy as np

    return np.asarray(values)


def _register_sklearn_average(kind: str, average: str) -> None:
    # precision/recall/f1 for one averaging; `labels` (the full label set) is the caller's, so a
    # class absent from a small split still counts in the macro average. A class never predicted
    # scores 0 rather than warning (zero_division=0).
    def fn(predictions, references, **kwargs):
        import sklearn.metrics

        score = getattr(sklearn.metrics, f"{kind}_score")
        return score(_np(references), _np(predictions), **{"zero_division": 0, **kwargs, "average": average})

    how = {"macro": "mean over classes", "micro": "from counts pooled over classes",
           "weighted": "mean over classes weighted by support"}[average]
    register_metric(f"{kind}_{average}", "max", "scikit-learn",
                    f"{kind}, {how} (sklearn {kind}_score average={average!r}; labels or indicator rows)")(fn)


for _kind in ("precision", "recall", "f1"):
    for _average in ("macro", "micro", "weighted"):
        _register_sklearn_average(_kind, _average)


@register_metric("accuracy", "max", "scikit-learn", "share of predictions equal to their reference (sklearn accuracy_score)")
def _accuracy(predictions, references, **kwargs):
    from sklearn.metrics import accuracy_score

    return accuracy_score(_np(references), _np(predictions), **kwargs)


@register_metric("subset_accuracy", "max", "scikit-learn",
                 "multi-label: share of samples whose whole label set is right (sklearn accuracy_score on indicator arrays)")
def _subset_accuracy(predictions, references, **kwargs):
    from sklearn.metrics import accuracy_score

    return accuracy_score(_np(references), _np(predictions), **kwargs)


@register_metric("top5_accuracy", "max", "omnitune",
                 "share of references among the first k=5 ranked candidates (predictions: ranked label lists)")
def _top_k_accuracy(predictions, references, k: int = 5):
    # sklearn's top_k_accuracy_score needs the full score matrix; tasks keep only the ranked top k.
    if not len(references):
        return 0.0
    return sum(r in list(p)[:k] for p, r in zip(predictions, references, strict=True)) / len(references)


@register_metric("mse", "min", "scikit-learn", "mean squared error (sklearn mean_squared_error)")
def _mse(predictions, references, **kwargs):
    from sklearn.metrics import mean_squared_error

    return mean_squared_error(_np(references).astype(float), _np(predictions).astype(float), **kwargs)


@register_metric("mae", "min", "scikit-learn", "mean absolute error (sklearn mean_absolute_error)")
def _mae(predictions, references, **kwargs):
    from sklearn.metrics import mean_absolute_error

    return mean_absolute_error(_np(references).astype(float), _np(predictions).astype(float), **kwargs)


# ---- item-weighted means: the loss and language-model likelihoods --------------------------------
# predictions are summed values (per batch or per sequence), references the number of items
# (tokens or samples) each sum covers, so the mean is over items whatever the batching.

def _item_mean(sums, counts) -> float:
    return float(sum(sums)) / max(1, sum(counts))


@register_metric("loss", "min", "omnitune",
                 "the trainer's loss: summed loss / number of items (tokens or samples); predictions = sums, references = counts")
def _loss(predictions, references):
    return _item_mean(predictions, references)


@register_metric("token_nll", "min", "omnitune",
                 "mean negative log-likelihood per token (nats); predictions = summed NLL per sequence, references = token counts")
def _token_nll(predictions, references):
    return _item_mean(predictions, references)


@register_metric("perplexity", "min", "omnitune",
                 "exp(token_nll), the exponent capped at 50; predictions = summed NLL per sequence, references = token counts")
def _perplexity(predictions, references):
    return math.exp(min(_item_mean(predictions, references), 50.0))


@register_metric("gen_len", None, "omnitune",
                 "mean generated length in tokens (predictions: token counts; references unused); a figure, not a score")
def _gen_len(predictions, references=None):
    values = list(predictions)
    return float(sum(values)) / len(values) if values else 0.0


# ---- directions and user metrics -----------------------------------------------------------------

@dataclass(frozen=True)
class UserMetric:
    """A metric named in ``eval.extra_metrics``; calling it gives ``{name: value}``."""

    spec: str
    name: str
    direction: Direction | dict[str, Direction] | None
    library: str
    fn: Callable[..., Any]

    def __call__(self, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
        value = self.fn(predictions, references)
        if isinstance(value, Real) and not isinstance(value, bool):
            return {self.name: float(value)}
        if isinstance(value, Mapping):
            # evaluate's modules also return lists (BLEU's n-gram precisions): numbers only
            out = {str(k): float(v) for k, v in value.items() if isinstance(v, Real) and not isinstance(v, bool)}
            if out:
                return out
        raise RecipeError(f"metric {self.spec!r} returned {type(value).__name__}; "
                          "it must return a number or a dict of numbers")

    def mode(self, key: str) -> Direction | None:
        """The declared direction of value ``key`` (None if undeclared)."""
        if isinstance(self.direction, dict):
            return self.direction.get(key)
        return self.direction


def load_user_metric(spec: str, where: str = "eval.extra_metrics") -> UserMetric:
    """``"pkg.mod:fn"`` -> the user's function; a registered name -> that metric; another plain
    name -> ``evaluate.load(name)`` (Hub metrics need the network). Errors name ``spec``."""
    if ":" in spec:
        fn = import_object(spec, where=where)
        if not callable(fn):
            raise RecipeError(f"{where}: {spec!r} is a {type(fn).__name__}, not a function")
        direction = getattr(fn, "direction", None)
        values = direction.values() if isinstance(direction, dict) else [direction]
        if any(d not in (*_DIRECTIONS, None) for d in values):
            raise RecipeError(f"{where}: {spec!r} declares direction {direction!r}; "
                              "use 'max', 'min' or a dict of them per returned key")
        return UserMetric(spec, spec.rpartition(":")[2].rpartition(".")[2], direction, spec.partition(":")[0], fn)
    if spec in METRICS.names():
        m = METRICS.get(spec)
        return UserMetric(spec, spec, m.direction, m.library, m.fn)
    try:
        import evaluate

        module = evaluate.load(spec)
    except Exception as exc:  # offline, a typo or a broken module: all say which entry failed
        raise RecipeError(f"{where}: {spec!r} is not a registered metric (`omnitune metrics` lists them) "
                          f"nor an import path 'pkg.module:function', and evaluate.load({spec!r}) failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    return UserMetric(spec, spec, None, "evaluate",
                      lambda predictions, references: module.compute(predictions=predictions, references=references))


def declared_metrics(task: Any) -> tuple[Metric, ...]:
    """The metrics a task declares itself (``DeclaresMetrics.metric_definitions``), () for others."""
    from ..base.task import DeclaresMetrics

    if not isinstance(task, DeclaresMetrics):
        return ()
    metrics = tuple(task.metric_definitions)
    for m in metrics:
        if not isinstance(m, Metric):
            raise RecipeError(f"task {getattr(task, 'name', task)!r}: metric_definitions holds a "
                              f"{type(m).__name__}, not a core.base.metrics.Metric")
    return metrics


def metric_mode(name: str, extra: Iterable[UserMetric | Metric] | Mapping[str, UserMetric | Metric] = ()
                ) -> Direction:
    """``"max"`` or ``"min"`` for metric ``name``: a user metric's declared one (``extra``: the run's
    loaded ``eval.extra_metrics``, a list or a name -> metric dict), a task's own declared
    :class:`Metric` (also in ``extra``, see :func:`declared_metrics`), else the registry's.
    Unknown or undirected: RecipeError."""
    items = tuple(extra.values() if isinstance(extra, Mapping) else extra)
    own = {m.name: m for m in items if isinstance(m, Metric)}
    extra = tuple(m for m in items if not isinstance(m, Metric))
    if name in own:
        if own[name].direction is None:
            raise RecipeError(f"metric {name!r} has no direction ({own[name].description}); select by another metric")
        return own[name].direction
    for user in extra:
        if name == user.name or (isinstance(user.direction, dict) and name in user.direction):
            mode = user.mode(name)
            if mode is None:
                raise RecipeError(f"metric {name!r} (from {user.spec!r}) has no declared direction: set "
                                  f"`direction = \"max\"` (or \"min\") on the function, or set the mode in the recipe")
            return mode
    if name not in METRICS.names():
        known = sorted({*list_metrics(), *(u.name for u in extra), *own})
        raise RecipeError(f"unknown metric {name!r}: no direction to select by (known: {', '.join(known)})")
    metric = METRICS.get(name)
    if metric.direction is None:
        raise RecipeError(f"metric {name!r} has no direction ({metric.description}); select by another metric")
    return metric.direction
