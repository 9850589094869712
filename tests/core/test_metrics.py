"""The metric registry: every registered metric against a value worked out by hand, directions,
user metrics by import path, and `omnitune metrics`."""

from __future__ import annotations

import math
import sys

import pytest

from omnitune.core.cli import main
from omnitune.core.base.errors import RecipeError
from omnitune.core.base.metrics import (METRICS, Metric, UserMetric, compute, list_metrics, load_user_metric,
                                   metric_mode)
from omnitune.core.base.plugins import import_object

# Single-label case used by accuracy/precision/recall/f1 (supports 3, 2, 1):
#   refs  0 0 0 1 1 2
#   preds 0 0 1 1 2 2     -> right at positions 0, 1, 3, 5: accuracy 4/6
# class 0: P 2/2, R 2/3, F 4/5;  class 1: P 1/2, R 1/2, F 1/2;  class 2: P 1/2, R 1/1, F 2/3
# micro (pooled counts) = accuracy = 2/3 for every kind; weighted by supports 3:2:1.
REFS = [0, 0, 0, 1, 1, 2]
PREDS = [0, 0, 1, 1, 2, 2]
SINGLE = (PREDS, REFS, {})

# (predictions, references, kwargs, expected value, direction)
CASES = {
    "accuracy": (*SINGLE, 4 / 6, "max"),
    "precision_macro": (*SINGLE, (1 + 1 / 2 + 1 / 2) / 3, "max"),
    "recall_macro": (*SINGLE, (2 / 3 + 1 / 2 + 1) / 3, "max"),
    "f1_macro": (*SINGLE, (4 / 5 + 1 / 2 + 2 / 3) / 3, "max"),
    "precision_micro": (*SINGLE, 2 / 3, "max"),
    "recall_micro": (*SINGLE, 2 / 3, "max"),
    "f1_micro": (*SINGLE, 2 / 3, "max"),
    "precision_weighted": (*SINGLE, (3 * 1 + 2 * 1 / 2 + 1 * 1 / 2) / 6, "max"),
    "recall_weighted": (*SINGLE, (3 * 2 / 3 + 2 * 1 / 2 + 1 * 1) / 6, "max"),
    "f1_weighted": (*SINGLE, (3 * 4 / 5 + 2 * 1 / 2 + 1 * 2 / 3) / 6, "max"),
    # multi-label rows: only the first is entirely right
    "subset_accuracy": ([[1, 0, 1], [0, 1, 1], [1, 0, 0]], [[1, 0, 1], [0, 1, 0], [1, 1, 0]], {}, 1 / 3, "max"),
    # 9 is sixth in the first ranking, 3 is in the second's top five, 0 is in none
    "top5_accuracy": ([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5], [8, 9, 7, 9, 3]], [9, 3, 0], {}, 1 / 3, "max"),
    # differences 0, -1, 3
    "mse": ([1.0, 2.0, 4.0], [1.0, 3.0, 1.0], {}, 10 / 3, "min"),
    "mae": ([1.0, 2.0, 4.0], [1.0, 3.0, 1.0], {}, 4 / 3, "min"),
    # sums 1 and 9 over 2 and 6 items: 10 / 8 per item (the mean of batch means would be 1.0)
    "loss": ([1.0, 9.0], [2, 6], {}, 1.25, "min"),
    "token_nll": ([1.0, 9.0], [2, 6], {}, 1.25, "min"),
    "perplexity": ([1.0, 9.0], [2, 6], {}, math.exp(1.25), "min"),
    # one insertion ("down") and one substitution ("the" -> "a") over 6 reference words
    "wer": (["the cat sat down", "on a mat"], ["the cat sat", "on the mat"], {}, 100 * 2 / 6, "min"),
    # characters (spaces count): 5 inserted (" down"), "the" -> "a" is 3 edits; 11 + 10 reference chars
    "cer": (["the cat sat down", "on a mat"], ["the cat sat", "on the mat"], {}, 100 * 8 / 21, "min"),
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty): (1/12) ** (1/4)
    "bleu": (["the cat sat on the mat"], ["the cat sat on a mat"], {}, 100 * (1 / 12) ** 0.25, "max"),
    # characters abc / abd: orders 1-3 have P = R = 2/3, 1/2, 0 (orders 4-6 empty, not counted)
    "chrf": (["abc"], ["abd"], {}, 100 * (2 / 3 + 1 / 2 + 0) / 3, "max"),
    # sample 1: 3 of 3 predicted unigrams in a 6-word reference, F = 2/3; sample 2 exact, F = 1
    "rouge1": (["the cat sat", "a b"], ["the cat sat on the mat", "a b"], {}, (2 / 3 + 1) / 2, "max"),
    # sample 1: 2 of 2 bigrams, 5 in the reference: F = 2 * 1 * 0.4 / 1.4 = 4/7
    "rouge2": (["the cat sat", "a b"], ["the cat sat on the mat", "a b"], {}, (4 / 7 + 1) / 2, "max"),
    # longest common subsequence 3 words: as rouge1 here
    "rougeL": (["the cat sat", "a b"], ["the cat sat on the mat", "a b"], {}, (2 / 3 + 1) / 2, "max"),
}
# SQuAD normalisation drops case, punctuation and articles: "The Cat!" == "cat"; "a dog ran" -> "dog ran"
# against "dog": P 1/2, R 1, F1 2/3; per question in 0-100, then averaged
_QA = (["The Cat!", "a dog ran"], [["cat", "kitten"], "dog"])
# predictions are reward margins (chosen minus rejected): 2 of 4 positive (0 is not a win), mean 0.5
_MARGINS = ([2.0, -1.0, 0.0, 1.0], [None] * 4, {})
CASES.update({
    "squad_exact_match": (*_QA, {}, 50.0, "max"),
    "squad_f1": (*_QA, {}, (100 + 100 * 2 / 3) / 2, "max"),
    "exact_match": (*_QA, {}, 0.5, "max"),
    # parsed labels, compared case-blind; None (nothing parsed) is wrong
    "answer_accuracy": (["B", "c", None, "A"], ["B", "C", "D", "D"], {}, 0.5, "max"),
    # two sentences each: LCS per sentence pair; "the cat sat." vs "The cat sat.": 3/3 (case-blind tokens);
    # "the dog ran." vs "A dog ran.": union LCS 2 of 3 words each way -> summary-level P = R = 5/6
    "rougeLsum": (["the cat sat. the dog ran."], ["The cat sat. A dog ran."], {}, 5 / 6, "max"),
    "gen_len": ([3, 5], [None, None], {}, 4.0, None),
    "preference_accuracy": (*_MARGINS, 0.5, "max"),
    "reward_accuracy": (*_MARGINS, 0.5, "max"),
    "choice_accuracy": (*_MARGINS, 0.5, "max"),
    "mean_margin": (*_MARGINS, 0.5, "max"),
    "reward_margin": (*_MARGINS, 0.5, "max"),
    "mean_reward": (*_MARGINS, 0.5, "max"),
    # words (tags) equal to the reference, O included: 5 of 7 below (B-LOC missed, B-MISC missed)
    "token_accuracy": ([["B-PER", "I-PER", "O", "O", "O"], ["O", "O"]],
                       [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-MISC", "O"]], {}, 5 / 7, "max"),
})
# entities: true PER, LOC, MISC; predicted PER, LOC -> P 2/2, R 2/3
_TAGS = ([["B-PER", "I-PER", "O", "B-LOC", "O"], ["O", "O"]], [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-MISC", "O"]])
CASES.update({"entity_precision": (*_TAGS, {}, 1.0, "max"), "entity_recall": (*_TAGS, {}, 2 / 3, "max"),
              "entity_f1": (*_TAGS, {}, 0.8, "max")})


@pytest.mark.parametrize("name", list_metrics())
def test_every_registered_metric_matches_a_hand_worked_value(name):
    assert name in CASES, f"metric {name!r} is registered without a hand-worked case in this test"
    preds, refs, kwargs, expected, direction = CASES[name]
    metric = METRICS.get(name)
    assert metric.direction == direction and metric.library and metric.description
    # rel 1e-7: torchmetrics computes SQuAD in float32
    assert compute(name, preds, refs, **kwargs) == pytest.approx(expected, rel=1e-7, abs=1e-12)
    if direction is None:  # a figure, not a score (gen_len): it cannot pick a checkpoint
        with pytest.raises(RecipeError):
            metric_mode(name)
    else:
        assert metric_mode(name) == direction


def test_every_metric_a_task_emits_is_registered():
    emitted = {"accuracy", "top5_accuracy", "mse", "mae", "perplexity", "token_nll", "wer", "cer", "loss",
               "f1_micro", "f1_macro", "subset_accuracy"}
    emitted |= {f"{k}_{a}" for k in ("precision", "recall", "f1") for a in ("macro", "micro", "weighted")}
    assert emitted <= set(list_metrics())


def test_labels_count_classes_absent_from_the_split():
    # class 3 never occurs: with the full label set it scores 0 and pulls the macro mean down
    assert compute("precision_macro", PREDS, REFS, labels=[0, 1, 2, 3]) == pytest.approx((1 + 1 / 2 + 1 / 2 + 0) / 4)


def test_multi_label_f1():
    preds, refs = [[1, 0, 1], [0, 1, 1], [1, 0, 0]], [[1, 0, 1], [0, 1, 0], [1, 1, 0]]
    # pooled: TP 4, FP 1, FN 1; per column F = 1, 2/3, 2/3
    assert compute("f1_micro", preds, refs) == pytest.approx(4 / 5)
    assert compute("f1_macro", preds, refs) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_several_references_per_sample():
    # BLEU with two references: the second matches exactly
    assert compute("bleu", ["the cat sat on the mat"], [["a cat was on a mat", "the cat sat on the mat"]]) == pytest.approx(100.0)
    # ROUGE takes the best reference
    assert compute("rouge1", ["the cat"], [["a dog", "the cat"]]) == pytest.approx(1.0)


def test_unknown_or_undirected_metric_is_a_recipe_error(monkeypatch):
    with pytest.raises(RecipeError, match="'token_nl'"):
        metric_mode("token_nl")
    with pytest.raises(RecipeError, match="'f3'"):
        compute("f3", [1], [1])
    monkeypatch.setitem(METRICS._items, "tokens", Metric("tokens", None, "omnitune", sum, "a count"))
    with pytest.raises(RecipeError, match="'tokens' has no direction"):
        metric_mode("tokens")


USER_MODULE = '''
def f2(predictions, references):
    """F-beta with beta 2 for the positive class 1."""
    tp = sum(p == r == 1 for p, r in zip(predictions, references))
    fp = sum(p == 1 and r == 0 for p, r in zip(predictions, references))
    fn = sum(p == 0 and r == 1 for p, r in zip(predictions, references))
    return 5 * tp / (5 * tp + 4 * fn + fp)

f2.direction = "max"


def counts(predictions, references):
    return {"hits": sum(p == r for p, r in zip(predictions, references)), "misses": 1, "note": "text"}

counts.direction = {"hits": "max"}


def undeclared(predictions, references):
    return 0.5


def bad_direction(predictions, references):
    return 0.5

bad_direction.direction = "up"

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "omnitune_test_user_metrics.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "omnitune_test_user_metrics"
    sys.modules.pop("omnitune_test_user_metrics", None)


def test_user_metric_by_import_path(user_module):
    f2 = load_user_metric(f"{user_module}:f2")
    assert (f2.name, f2.direction, f2.library) == ("f2", "max", user_module)
    # TP 1, FN 1, FP 1: 5 / (5 + 4 + 1)
    assert f2([1, 0, 1, 0], [1, 1, 0, 0]) == {"f2": pytest.approx(0.5)}
    assert metric_mode("f2", extra=[f2]) == "max"

    counts = load_user_metric(f"{user_module}:counts")
    assert counts([1, 2], [1, 3]) == {"hits": 1.0, "misses": 1.0}  # non-numbers are left out
    assert metric_mode("hits", extra=[counts]) == metric_mode("hits", extra={"counts": counts}) == "max"
    with pytest.raises(RecipeError, match="no declared direction"):
        metric_mode("undeclared", extra=[load_user_metric(f"{user_module}:undeclared")])
    with pytest.raises(RecipeError, match="'misses'"):
        metric_mode("misses", extra=[counts])


def test_user_metric_errors_name_the_spec(user_module):
    for spec, needle in [(f"{user_module}:nope", "no attribute 'nope'"),
                         ("omnitune_no_such_module:f2", "cannot import module"),
                         (f"{user_module}:NOT_CALLABLE", "not a function"),
                         (f"{user_module}:bad_direction", "direction 'up'"),
                         (f"{user_module}:", "not an import path")]:
        with pytest.raises(RecipeError) as info:
            load_user_metric(spec)
        assert spec in str(info.value) and needle in str(info.value) and "eval.extra_metrics" in str(info.value)


def test_registered_name_in_extra_metrics_is_the_registry_entry():
    wer = load_user_metric("wer")
    assert isinstance(wer, UserMetric) and wer.direction == "min" and wer.library == "jiwer"
    assert wer(["a b c"], ["a b d"]) == {"wer": pytest.approx(100 / 3)}


EVALUATE_MODULE = '''
import datasets
import evaluate


class Exact(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="exact", citation="", inputs_description="",
                                   features=datasets.Features({"predictions": datasets.Value("int64"),
                                                               "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        return {"exact": sum(p == r for p, r in zip(predictions, references)) / len(references), "n": [1]}
'''


def test_other_plain_names_go_to_evaluate_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "exact").mkdir()
    (tmp_path / "exact" / "exact.py").write_text(EVALUATE_MODULE)
    spec = str(tmp_path / "exact")  # evaluate.load takes a local module folder the same as a Hub name
    metric = load_user_metric(spec)
    assert metric.library == "evaluate" and metric.direction is None
    assert metric([1, 2, 3, 4], [1, 2, 0, 0]) == {"exact": 0.5}
    with pytest.raises(RecipeError, match="'omnitune-no-such-metric'.*evaluate.load"):
        load_user_metric("omnitune-no-such-metric")


def test_import_object_finds_modules_in_the_working_directory(tmp_path, monkeypatch):
    assert import_object("os.path:join.__name__", where="train.loss") == "join"
    (tmp_path / "omnitune_test_cwd_losses.py").write_text("class Contrastive:\n    margin = 0.5\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    monkeypatch.chdir(tmp_path)
    try:
        assert import_object("omnitune_test_cwd_losses:Contrastive.margin", where="train.loss") == 0.5
    finally:
        sys.modules.pop("omnitune_test_cwd_losses", None)
    with pytest.raises(RecipeError, match="train.loss: 'omnitune_test_cwd_losses' is not an import path"):
        import_object("omnitune_test_cwd_losses", where="train.loss")


def test_cli_lists_the_registry(capsys):
    assert main(["metrics"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: line.split()[1:3] for line in lines}
    assert sorted(rows) == list_metrics()
    assert rows["wer"] == ["min", "jiwer"] and rows["f1_macro"] == ["max", "scikit-learn"]
    assert rows["bleu"] == ["max", "sacrebleu"] and rows["entity_f1"] == ["max", "seqeval"]


def test_domain_metrics_come_through_the_entry_point_group_under_their_own_names():
    import subprocess
    from importlib.metadata import entry_points

    group = {ep.name: ep for ep in entry_points(group="omnitune.metrics")}
    assert {"wer", "cer", "bleu", "rougeL", "entity_f1", "squad_f1", "exact_match", "preference_accuracy"} <= set(group)
    for name, ep in group.items():
        metric = ep.load()
        assert isinstance(metric, Metric) and metric.name == name, ep.value
        assert ep.value.startswith(("omnitune.text.", "omnitune.speech.")), "a domain's metric lives in its domain"
    # The core itself registers only the generic metrics: none of the domains' names.
    own = subprocess.run([sys.executable, "-c", "from omnitune.core.base.metrics import METRICS; "
                          "print(' '.join(sorted(METRICS._items)))"], capture_output=True, text=True, check=True)
    core_names = set(own.stdout.split())
    assert {"accuracy", "f1_macro", "mse", "loss", "perplexity"} <= core_names and not core_names & set(group)


def test_a_metric_a_task_declares_gives_its_direction():
    from omnitune.core.base.metrics import declared_metrics, define_metric

    @define_metric("lag", "min", "test", "seconds behind")
    def lag(predictions, references):
        return sum(predictions) / len(predictions)

    class Declaring:
        metric_definitions = (lag,)

    assert lag([1.0, 3.0], None) == 2.0
    with pytest.raises(RecipeError, match="'lag'"):
        metric_mode("lag")  # the registry does not know it
    assert declared_metrics(Declaring()) == (lag,) and declared_metrics(object()) == ()
    assert metric_mode("lag", declared_metrics(Declaring())) == "min"
    assert metric_mode("lag", {"lag": lag}) == "min" and metric_mode("accuracy", [lag]) == "max"
    undirected = define_metric("count", None, "test")(lambda p, r: len(p))
    with pytest.raises(RecipeError, match="'count' has no direction"):
        metric_mode("count", [undirected])
