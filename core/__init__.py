"""The shared core, in sub-packages that depend only downwards::

    base        errors, registries, recipe schema, task contract, data, assets, metrics
    adapters    PEFT and bottleneck adapters
    loop        the Trainer, its hooks, optimisers, schedules, strategies, checkpoints
    runs        the run folder: its file names, creating one, loading a run's model
    evaluation  reports, model card, per-group metrics, retention, diagnosis
    deploy      ONNX export and inference
    components  recipe sections -> the explicit arguments of the trainer, adapters, evaluations
    pipeline    train / evaluate as named stages
    studies     tune, cross-validation, data-size curves, suites
    api, cli    the public facade and the command line

``tests/core/test_architecture.py`` holds the layout to this: no import circle, no private name
imported across modules, no task name, no file over 600 lines.

Modules that moved into the sub-packages keep their old import path (``omnitune.core.trainer``
is ``omnitune.core.loop.trainer``, the same module object) through the table below.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Old path (below omnitune.core) -> new path, for code and pickles written before the split.
MOVED = {
    "errors": "base.errors", "registry": "base.registry", "plugins": "base.plugins",
    "recipe": "base.recipe", "task": "base.task", "data": "base.data", "assets": "base.assets",
    "seeding": "base.seeding", "mmap_store": "base.mmap_store", "generation": "base.generation",
    "metrics": "base.metrics",
    "peft": "adapters.peft", "bottleneck": "adapters.bottleneck",
    "trainer": "loop.trainer", "optim": "loop.optim", "strategies": "loop.strategies",
    "checkpoint": "loop.checkpoint", "ema": "loop.ema", "mixing": "loop.mixing",
    "tracking": "loop.tracking", "feature_cache": "loop.feature_cache", "launch": "loop.launch",
    "report": "evaluation.report", "groups": "evaluation.groups", "retention": "evaluation.retention",
    "diagnosis": "evaluation.diagnosis",
    "export": "deploy.export", "onnx_predict": "deploy.onnx_predict",
    "tune": "studies.tune", "cv": "studies.cv", "curve": "studies.curve", "suite": "studies.suite",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``omnitune.core.<old>`` as the module at its new path (one module object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.rpartition(".")
        if prefix != __name__ or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):  # already executed under its new name
        pass


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.append(_Alias())
