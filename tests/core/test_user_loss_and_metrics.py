"""A recipe names a user's own loss (``train.loss``) and metrics (``eval.extra_metrics``) by import
path; the loss is checked against the task's outputs before training starts; metric directions come
from the registry or the user's declaration, never from the name."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from omnitune.core.api import train
from omnitune.core.base.errors import RecipeError
from omnitune.core.loop.trainer import Interrupted

from ..conftest import text_recipe, write_recipe

USER_MODULE = textwrap.dedent('''
    import torch
    import torch.nn.functional as F

    CALLS = {"n": 0}


    class MarginLoss:
        """A contrastive-style margin loss on the logits: the true class must beat the others by 1."""

        def __call__(self, logits, batch):
            CALLS["n"] += 1
            true = logits.gather(1, batch["labels"][:, None])
            return F.relu(1.0 - (true - logits)).sum(-1).mean() - 1.0


    def wrong_shape(logits, batch):
        return logits  # not a scalar


    def constant(logits, batch):
        return torch.tensor(0.5)  # does not depend on the model


    def share_positive(predictions, references):
        return sum(p == 1 for p in predictions) / len(predictions)
    share_positive.direction = "max"


    def plain_accuracy(predictions, references):
        return sum(p == r for p, r in zip(predictions, references)) / len(predictions)
    plain_accuracy.direction = "max"


    def undirected(predictions, references):
        return 0.0
''')


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg_omnitune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plugins.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userpkg_omnitune.plugins"
    for name in [m for m in sys.modules if m.startswith("userpkg_omnitune")]:
        del sys.modules[name]


def _run(tmp_path, tiny_bert, reviews_csv, name, **sections):
    sections["train"] = {"epochs": 1, "batch_size": 16, **sections.get("train", {})}
    recipe = text_recipe(tiny_bert, reviews_csv, tmp_path, data={"max_samples": 48}, **sections)
    recipe["output"]["run_name"] = name
    return train(write_recipe(tmp_path / f"{name}.yaml", recipe))


def test_user_loss_trains_instead_of_the_tasks(tmp_path, tiny_bert, reviews_csv, user_pkg):
    import importlib

    module = importlib.import_module(user_pkg)
    plain = _run(tmp_path, tiny_bert, reviews_csv, "plain")
    custom = _run(tmp_path, tiny_bert, reviews_csv, "custom", train={"epochs": 1, "batch_size": 16,
                                                                      "loss": f"{user_pkg}:MarginLoss"})
    assert module.CALLS["n"] == 1 + custom.metrics["steps"]  # the check before training, then each step
    trained = [json.loads(line) for line in (custom.run_dir / "events.jsonl").read_text().splitlines()]
    first = next(e for e in trained if e["event"] == "train")
    # With logits near 0 the margin loss starts near 1 (the other class is within the margin),
    # the task's cross-entropy near ln 2.
    assert first["loss"] == pytest.approx(1.0, abs=0.05)
    plain_first = next(json.loads(line) for line in (plain.run_dir / "events.jsonl").read_text().splitlines()
                       if '"train"' in line)
    assert plain_first["loss"] == pytest.approx(0.69, abs=0.05)


@pytest.mark.parametrize("fn, message", [("wrong_shape", "must return a scalar"),
                                         ("constant", "does not depend on the model"),
                                         ("missing_name", "has no attribute")])
def test_a_user_loss_that_does_not_fit_fails_before_training(tmp_path, tiny_bert, reviews_csv, user_pkg, fn,
                                                              message):
    with pytest.raises(RecipeError, match=message) as err:
        _run(tmp_path, tiny_bert, reviews_csv, fn, train={"epochs": 1, "loss": f"{user_pkg}:{fn}"})
    assert "train.loss" in str(err.value)
    # Nothing was trained: no checkpoint exists.
    assert not (tmp_path / fn / "checkpoints" / "last").exists()


def test_extra_metrics_are_computed_and_can_select_the_checkpoint(tmp_path, tiny_bert, reviews_csv, user_pkg):
    result = _run(tmp_path, tiny_bert, reviews_csv, "extra",
                  eval={"extra_metrics": [f"{user_pkg}:share_positive", f"{user_pkg}:plain_accuracy"],
                        "metric": "share_positive"})
    assert result.metrics["selected_by"] == "share_positive"
    test = result.metrics["test"]
    # User metrics get plain label indices (the task's metric_inputs), not the task's prediction dicts.
    assert test["plain_accuracy"] == pytest.approx(test["accuracy"])
    n_test = json.loads((result.run_dir / "data_report.json").read_text())["rows_kept"]["test"]
    assert test["share_positive"] * n_test == pytest.approx(round(test["share_positive"] * n_test))


def test_a_metric_without_direction_is_a_recipe_error(tmp_path, tiny_bert, reviews_csv, user_pkg):
    with pytest.raises(RecipeError, match="direction"):
        _run(tmp_path, tiny_bert, reviews_csv, "undirected",
             eval={"extra_metrics": [f"{user_pkg}:undirected"], "metric": "undirected"})
    # Named by the user with a mode, it is fine.
    result = _run(tmp_path, tiny_bert, reviews_csv, "directed",
                  eval={"extra_metrics": [f"{user_pkg}:undirected"], "metric": "undirected", "mode": "min"})
    assert result.metrics["selected_by"] == "undirected"


def test_token_nll_selects_the_lowest(tmp_path):
    # Directions come from the registry: a name with no "loss"-like substring is still "min".
    from omnitune.core.base.metrics import metric_mode

    assert metric_mode("token_nll") == "min" and metric_mode("bleu") == "max"
    with pytest.raises(RecipeError):
        metric_mode("my_made_up_score")


def test_ctrl_c_without_checkpoints_says_none_was_saved(tmp_path, tiny_bert, reviews_csv):
    recipe = text_recipe(tiny_bert, reviews_csv, tmp_path, data={"max_samples": 48},
                         train={"epochs": 2, "batch_size": 8, "save_checkpoints": False})
    with pytest.raises(Interrupted) as err:
        train(write_recipe(tmp_path / "r.yaml", recipe), callbacks=[lambda t: t.request_stop()])
    assert "checkpoint saved" not in str(err.value) and "cannot be resumed" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()
