"""The run verdict from synthetic learning curves (core/evaluation/diagnosis.py)."""

from __future__ import annotations

import doctest

from omnitune.core.evaluation import diagnosis
from omnitune.core.evaluation.diagnosis import diagnose, diagnosis_md


def _h(train: list[float], val: list[tuple[int, float]], metric: list[tuple[int, float]] = ()) -> list[dict]:
    out = [{"step": i + 1, "train_loss": v} for i, v in enumerate(train)]
    out += [{"step": s, "val_loss": v} for s, v in val]
    for s, m in metric:
        next(h for h in out if h["step"] == s and "val_loss" in h)["val_accuracy"] = m
    return out


def test_overfitting_names_the_step_of_the_minimum():
    train = [1.0 - 0.09 * i for i in range(10)]  # keeps falling
    val = [(2, 0.9), (4, 0.7), (6, 0.65), (8, 0.75), (10, 0.85)]  # minimum at 6, then +30 %
    d = diagnose(_h(train, val))
    assert d["verdict"] == "overfitting" and d["step"] == 6
    assert any("early_stopping" in a for a in d["advice"])
    assert "overfitting from step 6" in diagnosis_md(d)


def test_small_wobble_is_not_overfitting():
    train = [1.0 - 0.09 * i for i in range(10)]
    val = [(2, 0.9), (4, 0.7), (6, 0.65), (8, 0.66), (10, 0.67)]  # +3 %: under the 5 % margin
    assert diagnose(_h(train, val))["verdict"] == "converged"


def test_underfitting_when_training_loss_stays_flat():
    train = [0.70, 0.69, 0.70, 0.68, 0.69, 0.67]  # -4 %
    d = diagnose(_h(train, [(3, 0.70), (6, 0.69)]))
    assert d["verdict"] == "underfitting"
    assert any(a.startswith("train.lr") for a in d["advice"])
    assert any(a.startswith("finetune.strategy") for a in d["advice"])
    # A full fine-tune without adapters is not told to train more of the model or raise an adapter rank.
    d = diagnose(_h(train, [(3, 0.70), (6, 0.69)]), strategy="full", peft=False)
    assert not any(a.startswith(("finetune.strategy", "finetune.peft")) for a in d["advice"])


def test_still_improving_at_the_end():
    train = [1.0, 0.8, 0.6, 0.5, 0.4, 0.35]
    d = diagnose(_h(train, [(2, 0.9), (4, 0.7), (6, 0.6)]))
    assert d["verdict"] == "still improving" and d["step"] == 6
    # Flat loss but a metric still climbing by 5 % also counts.
    d = diagnose(_h(train, [(2, 0.9), (4, 0.6), (6, 0.6)], [(2, 0.5), (4, 0.6), (6, 0.63)]), "accuracy", "max")
    assert d["verdict"] == "still improving"


def test_diverged():
    assert diagnose(_h([1.0, 0.5, 0.4, 3.0], [(4, 2.0)]))["verdict"] == "diverged"
    assert diagnose(_h([1.0, float("nan")], []))["verdict"] == "diverged"


def test_too_short():
    assert diagnose(_h([1.0], []))["verdict"] == "too short to tell"


def test_doctest():
    assert doctest.testmod(diagnosis).failed == 0


def test_every_run_report_ends_with_the_verdict(tmp_path, tiny_bert, reviews_csv):
    from omnitune.core.api import train
    from omnitune.core.base.recipe import validate_recipe

    from ..conftest import text_recipe

    result = train(validate_recipe(text_recipe(tiny_bert, reviews_csv, tmp_path, train={"epochs": 2})))
    report = (result.run_dir / "report.md").read_text()
    tail = report[report.index("## Diagnosis"):]
    assert "**Verdict: " in tail and "##" not in tail[3:]
    assert result.metrics["diagnosis"]["verdict"] in diagnosis.ADVICE
