"""Objects named by import path in a recipe (``train.loss``, ``eval.extra_metrics``).

>>> import_object("os.path:join", where="train.loss").__name__
'join'
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ..base.errors import RecipeError


def _import_module(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # `omnitune` installed as a console script does not put the working directory on sys.path
        # (`python -m` does): a user's my_pkg/ next to the recipe should import either way.
        top = module.split(".")[0]
        if exc.name != top or os.getcwd() in sys.path or "" in sys.path:
            raise
        sys.path.append(os.getcwd())
        return importlib.import_module(module)


def import_object(spec: str, where: str) -> Any:
    """``"pkg.module:attr"`` (``attr`` may be dotted, ``Class.method``) -> the object.

    Errors are :class:`RecipeError` naming ``where`` (the recipe field) and the spec.
    """
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise RecipeError(f"{where}: {spec!r} is not an import path; write it as 'package.module:name'")
    try:
        obj = _import_module(module)
    except Exception as exc:  # any failure inside the user's module is reported with the spec
        raise RecipeError(f"{where}: cannot import module {module!r} of {spec!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RecipeError(f"{where}: {spec!r}: module {module!r} has no attribute {attr!r}") from None
    return obj
