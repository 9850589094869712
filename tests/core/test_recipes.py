"""Every shipped recipe validates; bad recipes fail naming the file and the field."""

from __future__ import annotations

import pytest

from omnitune.core.base.errors import RecipeError
from omnitune.core.base.recipe import list_shipped_recipes, load_recipe, parse_override

from ..conftest import text_recipe, write_recipe

SHIPPED = [name for name, _ in list_shipped_recipes()]


def test_recipes_are_shipped():
    assert "text/minilm-rotten-tomatoes" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_validates(name):
    recipe = load_recipe(name)
    assert recipe.name and recipe.description, f"{name} needs a name and a description"


def _bad(tmp_path, tiny_bert, reviews_csv, **sections):
    path = write_recipe(tmp_path / "r.yaml", text_recipe(tiny_bert, reviews_csv, tmp_path, **sections))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    return str(err.value), path


def test_unknown_field_names_file_and_field(tmp_path, tiny_bert, reviews_csv):
    msg, path = _bad(tmp_path, tiny_bert, reviews_csv, train={"learning_rate": 1e-3})
    assert str(path) in msg and "train.learning_rate: unknown field" in msg


def test_wrong_type_names_field(tmp_path, tiny_bert, reviews_csv):
    msg, _ = _bad(tmp_path, tiny_bert, reviews_csv, train={"batch_size": "many"})
    assert "train.batch_size" in msg


def test_task_specific_field_is_checked(tmp_path, tiny_bert, reviews_csv):
    msg, _ = _bad(tmp_path, tiny_bert, reviews_csv, data={"text_colum": "text"})
    assert "data.text_colum: unknown field" in msg


def test_impossible_combination(tmp_path, tiny_bert, reviews_csv):
    msg, _ = _bad(tmp_path, tiny_bert, reviews_csv, finetune={"strategy": "partial"})
    assert "finetune" in msg and "freeze" in msg
    msg, _ = _bad(tmp_path, tiny_bert, reviews_csv, finetune={"strategy": "full", "freeze_layers": 2})
    assert "freeze" in msg


def test_malformed_yaml_gives_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntask: text-classification\nmodel: {name: [unclosed\n")
    with pytest.raises(RecipeError, match=r"broken.yaml: malformed YAML \(line \d+"):
        load_recipe(path)


def test_unknown_task_lists_known(tmp_path, tiny_bert, reviews_csv):
    msg, _ = _bad(tmp_path, tiny_bert, reviews_csv, task="text-clasification")
    assert "text-clasification" in msg and "text-classification" in msg


def test_overrides_go_through_validation(tmp_path, tiny_bert, reviews_csv):
    path = write_recipe(tmp_path / "r.yaml", text_recipe(tiny_bert, reviews_csv, tmp_path))
    recipe = load_recipe(path, ["train.lr=3e-5", "data.max_samples=500", "finetune.freeze=[embeddings.*]",
                                "finetune.strategy=partial"])
    assert recipe.train.lr == 3e-5 and recipe.data.max_samples == 500
    assert recipe.finetune.freeze == ["embeddings.*"]
    with pytest.raises(RecipeError, match="train.lr"):
        load_recipe(path, ["train.lr=fast"])
    with pytest.raises(RecipeError, match="train.lrr: unknown field"):
        load_recipe(path, ["train.lrr=1"])
    with pytest.raises(RecipeError, match="data.max_samples"):
        load_recipe(path, ["data.max_samples=-3"])


def test_parse_override_types():
    assert parse_override("train.epochs=3") == (["train", "epochs"], 3)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("model.name=asset:minilm-l6") == (["model", "name"], "asset:minilm-l6")
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_override("train.epochs")


def _minimal(task: str, **sections) -> dict:
    """A recipe that validates without reading any file (validation does not open model or data)."""
    return {"name": "r", "task": task, "model": {"name": "some-model"}, "data": {"source": "some.csv"}, **sections}


def test_mixup_on_a_text_recipe_is_refused_naming_field_and_file(tmp_path):
    path = write_recipe(tmp_path / "text-mixup.yaml", _minimal("text-classification",
                                                               regularization={"mixup_alpha": 0.2}))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "regularization.mixup_alpha" in msg
    # ... and as an override too
    ok = write_recipe(tmp_path / "text.yaml", _minimal("text-classification"))
    with pytest.raises(RecipeError, match="regularization.cutmix_alpha"):
        load_recipe(ok, ["regularization.cutmix_alpha=1.0"])


def test_mixup_on_a_vision_recipe_is_accepted(tmp_path):
    path = write_recipe(tmp_path / "vision.yaml", _minimal(
        "image-classification", regularization={"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.5}))
    assert load_recipe(path).regularization.mixup_alpha == 0.2


@pytest.mark.parametrize("task, override", [
    ("question-answering", "regularization.label_smoothing=0.1"),  # QA's span loss reads no smoothing
    ("speech-recognition", "regularization.mix_prob=0.5"),
    ("causal-lm", "data.labels=[a, b]"),  # no label set: nothing reads the label fields
    ("text-to-speech", "data.label_column=speaker"),
])
def test_fields_a_task_does_not_read_are_refused(tmp_path, task, override):
    path = write_recipe(tmp_path / "r.yaml", _minimal(task))
    load_recipe(path)  # the defaults are fine
    with pytest.raises(RecipeError, match=override.split("=")[0]):
        load_recipe(path, [override])


def test_fields_a_task_reads_are_accepted(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", _minimal("text-classification"))
    rec = load_recipe(path, ["regularization.label_smoothing=0.1", "data.labels=[neg, pos]"])
    assert rec.regularization.label_smoothing == 0.1 and rec.data.labels == ["neg", "pos"]
    rec = load_recipe(write_recipe(tmp_path / "s.yaml", _minimal("speech-recognition")),
                      ["regularization.label_smoothing=0.1"])
    assert rec.regularization.label_smoothing == 0.1
