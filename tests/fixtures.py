"""Each task's tiny fixture, found through the ``omnitune.fixtures`` registry.

The fixtures live in the domains' testing modules (text/testing.py and the like) and register under
the task's name; no task imports its fixture. A task without one (a plug-in, or a task a test
defines in-process) is skipped by the registry-parametrised tests, with the reason in the report.

    raw = tiny_recipe("text-classification", tmp_path)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from omnitune.core.base.registry import FIXTURES, TaskFixture, list_fixtures, list_tasks


def _no_fixture(task_name: str) -> str:
    return f"task {task_name!r} registers no fixture (entry-point group omnitune.fixtures)"


def task_params(names: list[str] | None = None) -> list:
    """``names`` (default: every registered task) as pytest params, a task without a fixture
    marked skipped with the reason."""
    have = set(list_fixtures())
    return [pytest.param(name, id=name, marks=() if name in have else pytest.mark.skip(reason=_no_fixture(name)))
            for name in (list_tasks() if names is None else names)]


def fixture(task_name: str) -> TaskFixture:
    """The task's fixture; skips the calling test when the task has none."""
    if task_name not in list_fixtures():
        pytest.skip(_no_fixture(task_name))
    return FIXTURES.get(task_name)


def tiny_recipe(task_name: str, folder: Path, like=None) -> dict:
    """The task's tiny raw recipe, built into ``folder`` (nothing downloaded)."""
    return fixture(task_name).tiny_recipe(Path(folder), like)


def tiny_inputs(task_name: str, folder: Path) -> list[str]:
    """Raw inputs for ``predict`` on the task's tiny model."""
    return fixture(task_name).tiny_inputs(Path(folder))
