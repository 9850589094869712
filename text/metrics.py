"""The text domain's metrics: SQuAD, BLEU/chrF, ROUGE, entity-level seqeval, generated answers and
preference learning. Each is a :class:`~omnitune.core.base.metrics.Metric` registered under its name
through the ``omnitune.metrics`` entry-point group (pyproject.toml), so the core's registry lists
and computes them without importing the text package until one is used. The libraries are
imported when a metric is computed.

>>> from omnitune.core.base.metrics import compute, metric_mode
>>> compute("exact_match", ["The Cat!"], ["cat"]), metric_mode("bleu")
(1.0, 'max')
"""

from __future__ import annotations

from omnitune.core.base.metrics import Metric, define_metric

# ---- torchmetrics: extractive question answering (SQuAD) ------------------------------------------
# predictions: answer strings; references: per question a list of accepted answers (or one string).
# An empty list is an unanswerable question (SQuAD 2.0): only the empty answer scores 100 there.

def _squad(predictions, references) -> dict:
    from torchmetrics.functional.text.squad import squad

    refs = [[r] if isinstance(r, str) else [str(a) for a in r] or [""] for r in references]
    preds = [{"prediction_text": str(p), "id": str(i)} for i, p in enumerate(predictions)]
    targets = [{"answers": {"text": r, "answer_start": [0] * len(r)}, "id": str(i)} for i, r in enumerate(refs)]
    return squad(preds, targets) if preds else {"exact_match": 0.0, "f1": 0.0}


@define_metric("squad_exact_match", "max", "torchmetrics",
               "SQuAD exact match, 0-100: the answer equals one of the references after SQuAD normalisation "
               "(case, punctuation, articles, spaces) (torchmetrics squad)")
def squad_exact_match(predictions, references):
    return float(_squad(predictions, references)["exact_match"])


@define_metric("squad_f1", "max", "torchmetrics",
               "SQuAD F1, 0-100: token overlap F1 of the answer with the best-matching reference after SQuAD "
               "normalisation, averaged over questions (torchmetrics squad)")
def squad_f1(predictions, references):
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


@define_metric("bleu", "max", "sacrebleu", "corpus BLEU, 0-100 (sacrebleu.corpus_bleu, default 13a tokeniser)")
def bleu(predictions, references, **kwargs):
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), _reference_streams(references), **kwargs).score


@define_metric("chrf", "max", "sacrebleu", "corpus chrF (character n-gram F-score), 0-100 (sacrebleu.corpus_chrf)")
def chrf(predictions, references, **kwargs):
    import sacrebleu

    return sacrebleu.corpus_chrf(list(predictions), _reference_streams(references), **kwargs).score


# ---- rouge-score: summarisation ------------------------------------------------------------------

def _rouge(kind: str) -> Metric:
    def fn(predictions, references, use_stemmer: bool = False):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer([kind], use_stemmer=use_stemmer)
        scores = [scorer.score_multi([r] if isinstance(r, str) else list(r), p)[kind].fmeasure
                  for p, r in zip(predictions, references, strict=True)]
        return sum(scores) / len(scores) if scores else 0.0

    what = {"rouge1": "unigram", "rouge2": "bigram", "rougeL": "longest-common-subsequence"}[kind]
    return define_metric(kind, "max", "rouge-score",
                         f"mean {what} ROUGE F-measure per sample, 0-1 (rouge_score; best of several references)")(fn)


rouge1, rouge2, rougeL = (_rouge(kind) for kind in ("rouge1", "rouge2", "rougeL"))


def split_sentences(text: str) -> str:
    """One sentence per line, as rougeLsum expects: kept as is when the text already has line breaks,
    else split after ., ! or ? followed by white space and a capital letter, digit or quote (a plain
    rule: rouge-score's own splitter needs NLTK's punkt data, which is not installed offline)."""
    import re

    if "\n" in text:
        return text
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])", text.strip()) if s)


@define_metric("rougeLsum", "max", "rouge-score",
               "mean summary-level LCS ROUGE F-measure per sample, 0-1: the LCS over sentences (one per line; "
               "texts without line breaks are split after sentence ends), rouge_score's rougeLsum")
def rougeLsum(predictions, references, use_stemmer: bool = False):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=use_stemmer)
    scores = [scorer.score_multi([split_sentences(x) for x in ([r] if isinstance(r, str) else r)],
                                 split_sentences(p))["rougeLsum"].fmeasure
              for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


# ---- seqeval: entities in tagged sequences (NER) -------------------------------------------------

def _seqeval(kind: str) -> Metric:
    def fn(predictions, references, **kwargs):
        import seqeval.metrics
        import seqeval.scheme

        if isinstance(kwargs.get("scheme"), str):  # "IOB2" -> seqeval.scheme.IOB2
            kwargs["scheme"] = getattr(seqeval.scheme, kwargs["scheme"])
        score = getattr(seqeval.metrics, f"{kind}_score")
        return score([list(r) for r in references], [list(p) for p in predictions], **{"zero_division": 0, **kwargs})

    return define_metric(f"entity_{kind}", "max", "seqeval",
                         f"entity-level {kind}, micro-averaged over entities (seqeval {kind}_score on tag sequences)")(fn)


entity_precision, entity_recall, entity_f1 = (_seqeval(kind) for kind in ("precision", "recall", "f1"))


@define_metric("token_accuracy", "max", "seqeval",
               "share of tokens (words) whose tag equals the reference tag, 'O' included (seqeval accuracy_score)")
def token_accuracy(predictions, references):
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


@define_metric("exact_match", "max", "omnitune",
               "share of generated answers equal to a reference after SQuAD normalisation (case, punctuation, "
               "articles, spaces); a reference may be a list of accepted answers")
def exact_match(predictions, references):
    if not len(references):
        return 0.0
    hits = [any(normalize_answer(p) == normalize_answer(a) for a in _answers(r))
            for p, r in zip(predictions, references, strict=True)]
    return sum(hits) / len(hits)


@define_metric("answer_accuracy", "max", "omnitune",
               "share of answers whose label parsed from the generation equals the reference's (None = unparsed, wrong)")
def answer_accuracy(predictions, references):
    if not len(references):
        return 0.0
    return sum(p is not None and str(p).strip().casefold() == str(r).strip().casefold()
               for p, r in zip(predictions, references, strict=True)) / len(references)


# ---- preference learning (preference.py): per-pair margins, per-sample rewards -------------

@define_metric("preference_accuracy", "max", "omnitune",
               "reward model: share of pairs scored higher for the chosen response; predictions = r_chosen - r_rejected")
def preference_accuracy(predictions, references=None):
    return sum(1.0 for m in predictions if m > 0) / max(1, len(predictions))


@define_metric("reward_accuracy", "max", "omnitune",
               "DPO/IPO: share of pairs whose implicit reward beta*log(pi/ref) is higher for the chosen response; "
               "predictions = reward margins")
def reward_accuracy(predictions, references=None):
    return preference_accuracy.fn(predictions)


@define_metric("choice_accuracy", "max", "omnitune",
               "policy: share of pairs where the chosen response has the higher summed log-likelihood; "
               "predictions = log p(chosen) - log p(rejected)")
def choice_accuracy(predictions, references=None):
    return preference_accuracy.fn(predictions)


@define_metric("mean_margin", "max", "omnitune", "reward model: mean of r_chosen - r_rejected over pairs")
def mean_margin(predictions, references=None):
    return float(sum(predictions)) / max(1, len(predictions))


@define_metric("reward_margin", "max", "omnitune", "DPO/IPO: mean implicit reward margin over pairs")
def reward_margin(predictions, references=None):
    return mean_margin.fn(predictions)


@define_metric("mean_reward", "max", "omnitune", "RL: mean reward of the policy's (greedy) responses")
def mean_reward(predictions, references=None):
    return mean_margin.fn(predictions)
