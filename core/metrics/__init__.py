"""Metric modules that load offline through ``evaluate``.

``load_metric("accuracy")`` loads the module shipped here (no network); any other name, such as a
Hub metric ("bleu") or a path to a module, goes to ``evaluate.load`` unchanged, so a user online
can still name any Hub metric.
"""

from __future__ import annotations

import functools
from pathlib import Path

_HERE = Path(__file__).parent


def list_metrics() -> list[str]:
    return sorted(p.name for p in _HERE.iterdir() if (p / f"{p.name}.py").is_file())


@functools.cache
def load_metric(name: str):
    import evaluate

    local = _HERE / name / f"{name}.py"
    return evaluate.load(str(local) if local.is_file() else name)


def compute(name: str, predictions, references, **kwargs) -> dict:
    return load_metric(name).compute(predictions=predictions, references=references, **kwargs)
