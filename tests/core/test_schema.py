"""`omnitune schema TASK`: every recipe field has an explanation, and the command prints them all."""

from __future__ import annotations

import json
import typing

import pytest
from pydantic import BaseModel

from omnitune.core.base.recipe import recipe_class
from omnitune.core.base.registry import list_tasks
from omnitune.core.cli import main


def _sections(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _sections(a)]


def _fields(model: type[BaseModel], prefix: str = ""):
    """Every (dotted path, FieldInfo) of a recipe model, nested sections and list/dict items included."""
    for name, field in model.model_fields.items():
        yield prefix + name, field
        for sub in _sections(field.annotation):
            yield from _fields(sub, f"{prefix}{name}.{sub.__name__}.")


@pytest.mark.parametrize("task", list_tasks())
def test_every_recipe_field_has_a_description(task):
    paths = list(_fields(recipe_class(task)))
    assert len(paths) > 100  # the walk reached the nested sections
    missing = [path for path, field in paths if not (field.description or "").strip()]
    assert not missing, f"{task}: fields without a description (a docstring under the field): {missing}"


def test_schema_command_prints_fields_with_type_default_and_explanation(capsys):
    assert main(["schema", "text-classification"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    at = lines.index("train.lr: float = 5e-05")
    assert "Peak learning rate" in lines[at + 1]
    for head in ("data.text_column: str = \"text\"", "finetune.peft.r: int = 8", "model.name: str  (required)",
                 "sched.name: \"linear\" | \"cosine\" | \"constant\" | \"polynomial\" | \"plateau\" = \"linear\""):
        assert head in lines, head
    mixup = lines.index("regularization.mixup_alpha: float = 0.0")
    assert "not used by text-classification" in lines[mixup + 1]


def test_schema_command_json_and_task_list(capsys):
    assert main(["schema", "speech-recognition", "--format", "json"]) == 0
    rows = {r["path"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["train.epochs"]["default"] == 3 and rows["train.epochs"]["type"] == "int"
    assert rows["data.eval_sets.NAME.snr_db"]["description"]
    assert rows["data.augment[<noise>].min_snr_db"]["default"] == 10.0
    assert rows["regularization.label_smoothing"]["used"] and not rows["regularization.mixup_alpha"]["used"]
    assert main(["schema"]) == 0
    assert "text-classification" in capsys.readouterr().out.split()
    assert main(["schema", "no-such-task"]) == 2


def test_train_resume_refuses_overrides(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["train", "--resume", str(run), "train.lr=1e-4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "overrides are not allowed" in err and "train.lr=1e-4" in err
    assert main(["train", "--resume", str(run), "--nproc", "2", "train.lr=1e-4", "train.epochs=1"]) == 2
    assert "train.epochs=1" in capsys.readouterr().err
