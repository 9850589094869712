"""omnitune: fine-tune pretrained text, vision and speech models on one shared core.

The public API (imported lazily, so ``omnitune --help`` stays fast)::

    import omnitune
    recipe = omnitune.load_recipe("text/minilm-rotten-tomatoes", ["train.epochs=1"])
    result = omnitune.train(recipe, **{"data.max_samples": 500})
    omnitune.evaluate(result.run_dir)
    omnitune.predict(result.run_dir, ["a gripping, beautifully shot film"])
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "predict", "load_recipe", "list_recipes", "list_tasks", "RunResult"]


def __getattr__(name: str) -> Any:
    if name in ("train", "evaluate", "predict", "RunResult"):
        from .core import api

        return getattr(api, name)
    if name == "load_recipe":
        from .core.base.recipe import load_recipe

        return load_recipe
    if name == "list_recipes":
        from .core.base.recipe import list_shipped_recipes

        return list_shipped_recipes
    if name == "list_tasks":
        from .core.base.registry import list_tasks

        return list_tasks
    raise AttributeError(f"module 'omnitune' has no attribute {name!r}")
