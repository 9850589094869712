"""Registries for plug-ins, one per kind, each enumerable with ``names()``.

Tasks are discovered through the ``omnitune.tasks`` entry-point group (see pyproject.toml), so the
core never imports a domain package and a plug-in outside this repository registers a task by
declaring an entry point. Each task's test fixture is found the same way (``omnitune.fixtures``),
so no task imports its fixture. Other kinds (schedulers, metrics) register in-process with a decorator.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Generic, Protocol, TypeVar, runtime_checkable

from ..base.errors import OmnituneError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map with an error that lists the known names."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._group = entry_point_group
        self._entry_points: dict[str, Any] | None = None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def _discover(self) -> dict[str, Any]:
        if self._entry_points is None:
            found = entry_points(group=self._group) if self._group else []
            self._entry_points = {ep.name: ep for ep in found}
        return self._entry_points

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._discover()))

    def get(self, name: str) -> T:
        if name not in self._items:
            ep = self._discover().get(name)
            if ep is None:
                known = ", ".join(self.names()) or "none"
                raise OmnituneError(f"unknown {self.kind} {name!r} (known: {known})")
            self._items[name] = ep.load()
        return self._items[name]


TASKS: Registry[Any] = Registry("task", entry_point_group="omnitune.tasks")


def list_tasks() -> list[str]:
    return TASKS.names()


@runtime_checkable
class TaskFixture(Protocol):
    """A task's test fixture, registered under the task's name in the ``omnitune.fixtures`` group.

    It lives in the domain's testing module (text/testing.py and the like), one way, like
    transformers' ``testing_utils``: tests and fixtures import production code, production code
    never imports a fixture. Nothing it builds is downloaded.
    """

    def tiny_recipe(self, folder: Path, like: Any = None) -> dict:
        """A raw recipe for a tiny model and tiny data built into ``folder``; given ``like`` (a
        shipped Recipe), a model and data of the same kind as that recipe's."""
        ...

    def tiny_inputs(self, folder: Path) -> list[str]:
        """Raw inputs for ``predict`` on the tiny recipe's model (texts, or files built in ``folder``)."""
        ...


FIXTURES: Registry[TaskFixture] = Registry("fixture", entry_point_group="omnitune.fixtures")


def list_fixtures() -> list[str]:
    """The names of the tasks that register a fixture."""
    return FIXTURES.names()
