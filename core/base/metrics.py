"""The metric registry: every metric a task emits, its direction and the library that computes it.

Selection of the best checkpoint, early stopping and the plateau schedule read a metric's direction
from here (:func:`metric_mode`); a name that is not registered, or one registered without a
direction, is a :class:`RecipeError`, never a guess from the name. ``omnitune metrics`` prints the
registry. The libraries are imported when a metric is computed, so importing this module stays
cheap (the CLI lists metrics without scikit-learn or torch).

>>> compute("accuracy", [1, 0, 1, 1], [1, 1, 1, 1])
0.75
>>> metric_mode("wer"), metric_mode("f1_macro")
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


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, direction: Direction | None, library: str, description: str = ""):
    """Decorator: register ``fn(predictions, references, **kwargs) -> float`` as metric ``name``."""
    if direction not in (*_DIRECTIONS, None):
        raise ValueError(f"metric {name!r}: direction must be 'max', 'min' or None, not {direction!r}")

    def decorator(fn: Callable[..., float]) -> Callable[..., float]:
        METRICS.register(name)(Metric(name, direction, library, fn, description))
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


# ---- jiwer: speech recognition -------------------------------------------------------------------

@register_metric("wer", "min", "jiwer",
                 "corpus word error rate in percent, (S + D + I) / reference words (jiwer.wer); texts already normalised")
def _wer(predictions, references):
    import jiwer

    return 100.0 * jiwer.wer(list(references), list(predictions))


@register_metric("cer", "min", "jiwer", "corpus character error rate in percent (jiwer.cer)")
def _cer(predictions, references):
    import jiwer

    return 100.0 * jiwer.cer(list(references), list(predictions))


# ---- torchmetrics: extractive question answering (SQuAD) ------------------------------------------
# predictions: answer strings; references: per question a list of accepted answers (or one string).
# An empty list is an unanswerable question (SQuAD 2.0): only the empty answer scores 100 there.

def _squad(predictions, references) -> dict:
    from torchmetrics.functional.text.squad import squad

    refs = [[r] if isinstance(r, str) else [str(a) for a in r] or [""] for r in references]
    preds = [{"prediction_text": str(p), "id": str(i)} for i, p in enumerate(predictions)]
    targets = [{"answers": {"text": r, "answer_start": [0] * len(r)}, "id": str(i)} for i, r in enumerate(refs)]
    return squad(preds, targets) if preds else {"exact_match": 0.0, "f1": 0.0}


@register_metric("squad_exact_match", "max", "torchmetrics",
                 "SQuAD exact match, 0-100: the answer equals one of the references after SQuAD normalisation "
                 "(case, punctuation, articles, spaces) (torchmetrics squad)")
def _squad_exact_match(predictions, references):
    return float(_squad(predictions, references)["exact_match"])


@register_metric("squad_f1", "max", "torchmetrics",
                 "SQuAD F1, 0-100: token overlap F1 of the answer with the best-matching reference after SQuAD "
                 "normalisation, averaged over questions (torchmetrics squad)")
def _squad_f1(predictions, references):
    return float(_squad(predictions, references)["f1"])


# ---- sacrebleu: translation ----------------------------------------------------------------------

def _reference_streams(references) -> list[list[str]]:
    """Per-sample references (a string, or a list of strings for several) -> sacrebleu's streams."""
    if all(isinstance(r, str) for r in references):
        return [list(references)]
    counts = {len(r) for r in references}
    if len(counts) != 1:
        raise ValueError("every sample needs the same number of references for sacrebleu")
    return [list(stream) for stream in zip(*references)]


@register_metric("bleu", "max", "sacrebleu", "corpus BLEU, 0-100 (sacrebleu.corpus_bleu, default 13a tokeniser)")
def _bleu(predictions, references, **kwargs):
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), _reference_streams(references), **kwargs).score


@register_metric("chrf", "max", "sacrebleu", "corpus chrF (character n-gram F-score), 0-100 (sacrebleu.corpus_chrf)")
def _chrf(predictions, references, **kwargs):
    import sacrebleu

    return sacrebleu.corpus_chrf(list(predictions), _reference_streams(references), **kwargs).score


# ---- rouge-score: summarisation ------------------------------------------------------------------

def _register_rouge(kind: str) -> None:
    def fn(predictions, references, use_stemmer: bool = False):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer([kind], use_stemmer=use_stemmer)
        scores = [scorer.score_multi([r] if isinstance(r, str) else list(r), p)[kind].fmeasure
                  for p, r in zip(predictions, references, strict=True)]
        return sum(scores) / len(scores) if scores else 0.0

    what = {"rouge1": "unigram", "rouge2": "bigram", "rougeL": "longest-common-subsequence"}[kind]
    register_metric(kind, "max", "rouge-score",
                    f"mean {what} ROUGE F-measure per sample, 0-1 (rouge_score; best of several references)")(fn)


for _kind in ("rouge1", "rouge2", "rougeL"):
    _register_rouge(_kind)


def split_sentences(text: str) -> str:
    """One sentence per line, as rougeLsum expects: kept as is when the text already has line breaks,
    else split after ., ! or ? followed by white space and a capital letter, digit or quote (a plain
    rule: rouge-score's own splitter needs NLTK's punkt data, which is not installed offline)."""
    import re

    if "\n" in text:
        return text
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])", text.strip()) if s)


@register_metric("rougeLsum", "max", "rouge-score",
                 "mean summary-level LCS ROUGE F-measure per sample, 0-1: the LCS over sentences (one per line; "
                 "texts without line breaks are split after sentence ends), rouge_score's rougeLsum")
def _rouge_lsum(predictions, references, use_stemmer: bool = False):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=use_stemmer)
    scores = [scorer.score_multi([split_sentences(x) for x in ([r] if isinstance(r, str) else r)],
                                 split_sentences(p))["rougeLsum"].fmeasure
              for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


@register_metric("gen_len", None, "omnitune",
                 "mean generated length in tokens (predictions: token counts; references unused); a figure, not a score")
def _gen_len(predictions, references=None):
    values = list(predictions)
    return float(sum(values)) / len(values) if values else 0.0


# ---- seqeval: entities in tagged sequences (NER) -------------------------------------------------

def _register_seqeval(kind: str) -> None:
    def fn(predictions, references, **kwargs):
        import seqeval.metrics
        import seqeval.scheme

        if isinstance(kwargs.get("scheme"), str):  # "IOB2" -> seqeval.scheme.IOB2
            kwargs["scheme"] = getattr(seqeval.scheme, kwargs["scheme"])
        score = getattr(seqeval.metrics, f"{kind}_score")
        return score([list(r) for r in references], [list(p) for p in predictions], **{"zero_division": 0, **kwargs})

    register_metric(f"entity_{kind}", "max", "seqeval",
                    f"entity-level {kind}, micro-averaged over entities (seqeval {kind}_score on tag sequences)")(fn)


for _kind in ("precision", "recall", "f1"):
    _register_seqeval(_kind)


@register_metric("token_accuracy", "max", "seqeval",
                 "share of tokens (words) whose tag equals the reference tag, 'O' included (seqeval accuracy_score)")
def _token_accuracy(predictions, references):
    from seqeval.metrics import accuracy_score

    return accuracy_score([list(r) for r in references], [list(p) for p in predictions])


# ---- generated answers (chat, generative QA) -----------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    import re
    import string

    text = "".join(ch for ch in str(text).lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _answers(reference) -> list[str]:
    return [reference] if isinstance(reference, str) else [str(r) for r in reference]


@register_metric("exact_match", "max", "omnitune",
                 "share of generated answers equal to a reference after SQuAD normalisation (case, punctuation, "
                 "articles, spaces); a reference may be a list of accepted answers")
def _exact_match(predictions, references):
    if not len(references):
        return 0.0
    hits = [any(normalize_answer(p) == normalize_answer(a) for a in _answers(r))
            for p, r in zip(predictions, references, strict=True)]
    return sum(hits) / len(hits)


@register_metric("answer_accuracy", "max", "omnitune",
                 "share of answers whose label parsed from the generation equals the reference's (None = unparsed, wrong)")
def _answer_accuracy(predictions, references):
    if not len(references):
        return 0.0
    return sum(p is not None and str(p).strip().casefold() == str(r).strip().casefold()
               for p, r in zip(predictions, references, strict=True)) / len(references)


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


def metric_mode(name: str, extra: Iterable[UserMetric] | Mapping[str, UserMetric] = ()) -> Direction:
    """``"max"`` or ``"min"`` for metric ``name``: the registry's, or a user metric's declared one
    (``extra``: the run's loaded ``eval.extra_metrics``, a list or a name -> metric dict).
    Unknown or undirected: RecipeError."""
    extra = tuple(extra.values() if isinstance(extra, Mapping) else extra)
    for user in extra:
        if name == user.name or (isinstance(user.direction, dict) and name in user.direction):
            mode = user.mode(name)
            if mode is None:
                raise RecipeError(f"metric {name!r} (from {user.spec!r}) has no declared direction: set "
                                  f"`direction = \"max\"` (or \"min\") on the function, or set the mode in the recipe")
            return mode
    if name not in METRICS.names():
        known = sorted({*list_metrics(), *(u.name for u in extra)})
        raise RecipeError(f"unknown metric {name!r}: no direction to select by (known: {', '.join(known)})")
    metric = METRICS.get(name)
    if metric.direction is None:
        raise RecipeError(f"metric {name!r} has no direction ({metric.description}); select by another metric")
    return metric.direction


# ---- preference learning (text/preference.py): per-pair margins, per-sample rewards -------------

@register_metric("preference_accuracy", "max", "omnitune",
                 "reward model: share of pairs scored higher for the chosen response; predictions = r_chosen - r_rejected")
def _preference_accuracy(predictions, references=None):
    return sum(1.0 for m in predictions if m > 0) / max(1, len(predictions))


@register_metric("reward_accuracy", "max", "omnitune",
                 "DPO/IPO: share of pairs whose implicit reward beta*log(pi/ref) is higher for the chosen response; "
                 "predictions = reward margins")
def _reward_accuracy(predictions, references=None):
    return _preference_accuracy(predictions)


@register_metric("choice_accuracy", "max", "omnitune",
                 "policy: share of pairs where the chosen response has the higher summed log-likelihood; "
                 "predictions = log p(chosen) - log p(rejected)")
def _choice_accuracy(predictions, references=None):
    return _preference_accuracy(predictions)


@register_metric("mean_margin", "max", "omnitune", "reward model: mean of r_chosen - r_rejected over pairs")
def _mean_margin(predictions, references=None):
    return float(sum(predictions)) / max(1, len(predictions))


@register_metric("reward_margin", "max", "omnitune", "DPO/IPO: mean implicit reward margin over pairs")
def _reward_margin(predictions, references=None):
    return _mean_margin(predictions)


@register_metric("mean_reward", "max", "omnitune", "RL: mean reward of the policy's (greedy) responses")
def _mean_reward(predictions, references=None):
    return _mean_margin(predictions)
