"""Recipe files before validation: YAML reading, dotted overrides, shipped recipes.

>>> apply_overrides({"train": {"lr": 1e-5}}, ["train.lr=0.001", "train.epochs=2"])
{'train': {'lr': 0.001, 'epochs': 2}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..base.errors import RecipeError


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-5"`` -> (["train", "lr"], 3e-5). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=3e-5")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Set dotted keys in a raw recipe mapping; accepts ["a.b=1"] or {"a.b": 1}."""
    pairs = [parse_override(o) for o in overrides] if isinstance(overrides, list) else [
        (k.split("."), v) for k, v in overrides.items()
    ]
    for path, value in pairs:
        node = raw
        for key in path[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"override {'.'.join(path)}: {key!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise RecipeError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    return raw


def shipped_recipes_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("omnitune.recipes")))


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a shipped recipe such as ``text/minilm-rotten-tomatoes``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes_dir() / f"{str(name_or_path).removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise RecipeError(f"{name_or_path}: recipe file not found (nor a shipped recipe; see `omnitune recipes`)")


def list_shipped_recipes() -> list[tuple[str, str]]:
    """(name, description) of every shipped recipe, e.g. ("text/minilm-rotten-tomatoes", "...")."""
    root = shipped_recipes_dir()
    out = []
    for path in sorted(root.glob("*/*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        out.append((f"{path.parent.name}/{path.stem}", str(raw.get("description", "")).strip()))
    return out
