"""A task's recipe schema as rows: every field's dotted path, type, default and explanation.

Generated from the pydantic models (``model_fields``), so it is as true as the schema itself; the
explanations are the fields' descriptions (the docstring under each field). ``omnitune schema TASK``
prints it; the docs link the command instead of listing fields by hand.

>>> rows = schema_rows("text-classification")  # doctest: +SKIP
>>> next(r for r in rows if r["path"] == "train.lr")["default"]  # doctest: +SKIP
5e-05
"""

from __future__ import annotations

import json
import textwrap
import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ..base.recipe import TASK_IMPLEMENTED, recipe_class

REQUIRED = "required"
SECTION = "(section)"


def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """(path suffix, model) for the sections an annotation holds: the model itself (""), the items of
    a list ("[]") or the values of a dict (".NAME"); a union of models gives each its variant name."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    if origin is typing.Annotated:
        return _models_in(args[0])
    if origin in (list, tuple, set, frozenset):
        return [(_item(s), m) for a in args if a is not Ellipsis for s, m in _models_in(a)]
    if origin is dict:
        return [(".NAME" + s, m) for s, m in _models_in(args[1])]
    if origin in (Union, types.UnionType):
        found = [(s, m) for a in args for s, m in _models_in(a)]
        if len(found) > 1:  # a discriminated union: name each variant by its literal tag, if it has one
            return [(_variant(s, m), m) for s, m in found]
        return found
    return []


def _item(suffix: str) -> str:
    """``[]`` for a list item, ``[<noise>]`` for a list item of the variant named noise."""
    if suffix.startswith("<"):
        tag, _, rest = suffix.partition(">")
        return f"[{tag}>]{rest}"
    return "[]" + suffix


def _variant(suffix: str, model: type[BaseModel]) -> str:
    for field in model.model_fields.values():
        if typing.get_origin(field.annotation) is Literal and len(typing.get_args(field.annotation)) == 1:
            return f"<{typing.get_args(field.annotation)[0]}>{suffix}"
    return f"<{model.__name__}>{suffix}"


def type_name(annotation: Any) -> str:
    """A short, readable type: ``float``, ``int | None``, ``'linear' | 'cosine'``, ``list[str]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a) if isinstance(a, str) else repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(field: Any) -> Any:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return REQUIRED
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return SECTION
    return value


def schema_rows(task: str) -> list[dict[str, Any]]:
    """Every field of ``task``'s recipe, sections first then their fields, depth first: dicts with
    ``path``, ``type``, ``default``, ``description`` and ``used`` (False for a field only some tasks
    read, core.base.recipe.TASK_IMPLEMENTED, that this task does not: a recipe may not change it)."""
    cls = recipe_class(task)
    rows: list[dict[str, Any]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}{name}"
            used = path not in TASK_IMPLEMENTED or path in cls.task_implemented
            rows.append({"path": path, "type": type_name(field.annotation), "default": _default(field),
                         "description": " ".join((field.description or "").split()), "used": used})
            for suffix, sub in _models_in(field.annotation):
                walk(sub, f"{path}{suffix}.")

    walk(cls, "")
    return rows


def format_schema(task: str, rows: list[dict[str, Any]], width: int = 100) -> str:
    """The rows as text: ``path: type = default`` then the explanation, indented."""
    out = [f"Recipe fields of task {task!r} (dotted paths, as in overrides: train.lr=3e-5). "
           "NAME is any key; <x> is the item whose name is x."]
    for r in rows:
        default = "" if r["default"] in (REQUIRED, SECTION) else f" = {json.dumps(r['default'], default=str)}"
        head = f"{r['path']}: {r['type']}{default}" + ("  (required)" if r["default"] == REQUIRED else "")
        out.append("")
        out.append(head)
        text = r["description"]
        if not r["used"]:
            text = f"[not used by {task}: must keep its default] {text}"
        out.extend(textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(out)
