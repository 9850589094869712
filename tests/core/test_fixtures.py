"""Fixtures stay out of production code.

Each task's tiny recipe and inputs live in its domain's testing module (text/testing.py and the
like) and register under the task's name in the ``omnitune.fixtures`` entry-point group. The
dependency runs one way, as with transformers' ``testing_utils``: tests and fixtures import
production code; no production module imports a testing module (nor the test suite), not even
inside a function.
"""

from __future__ import annotations

import ast
import re
from importlib.metadata import entry_points
from pathlib import Path

from omnitune.core.base.registry import FIXTURES, TaskFixture, list_fixtures, list_tasks

ROOT = Path(__file__).resolve().parents[2]
# The source folders and the packages they install as (pyproject.toml's package-dir).
PACKAGES = {"api": "omnitune", "core": "omnitune.core", "text": "omnitune.text", "vision": "omnitune.vision",
            "speech": "omnitune.speech"}
TESTING_FILE = re.compile(r"testing(_\w+)?\.py$")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:-1]]
    if rel.name != "__init__.py":
        parts.append(rel.stem)
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    """Every module of the installed packages, by its module name."""
    return {_module_name(p): p for folder in PACKAGES for p in sorted((ROOT / folder).rglob("*.py"))}


TESTING = {name for name, path in _sources().items() if TESTING_FILE.search(path.name)}


def _testing_module(name: str) -> str | None:
    """The testing module (or test-suite module) that ``name`` is or lies in, if any."""
    if name.split(".")[0] == "tests":
        return "tests"
    return next((t for t in TESTING if name == t or name.startswith(t + ".")), None)


def imported_testing_modules(source: str, module: str, is_package: bool = False) -> list[str]:
    """The testing modules ``source`` (module ``module``) imports: ``import`` and ``from ... import``
    anywhere in the file (inside functions too, relative ones resolved), and module-name strings
    (``importlib.import_module("...")``, ``"module:attr"`` references)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value.split(":")[0]] if re.fullmatch(r"\w+(\.\w+)+(:\w+)?", node.value) else []
        found += [t for t in map(_testing_module, names) if t]
    return sorted(set(found))


def test_the_import_check_sees_relative_and_function_level_imports():
    source = ("import json\nfrom . import data\n\ndef f():\n    from .testing_tts import tiny_tts_recipe\n"
              "    from .. import text\n    return tiny_tts_recipe\n")
    assert imported_testing_modules(source, "omnitune.speech.tts") == ["omnitune.speech.testing_tts"]
    assert imported_testing_modules("from . import testing\n", "omnitune.vision",
                                    is_package=True) == ["omnitune.vision.testing"]
    assert imported_testing_modules("import importlib\nimportlib.import_module('omnitune.text.testing')\n",
                                    "omnitune.core.api") == ["omnitune.text.testing"]
    assert imported_testing_modules("from tests.fixtures import tiny_recipe\n", "omnitune.core.cli") == ["tests"]
    assert imported_testing_modules("from .testing_data import x\nimport os.path\nname = 'tests'\n",
                                    "omnitune.text.chat") == []


def test_no_production_module_imports_a_testing_module():
    assert {"omnitune.text.testing", "omnitune.vision.testing", "omnitune.speech.testing",
            "omnitune.speech.testing_tts"} <= TESTING
    bad = {}
    for name, path in _sources().items():
        if name in TESTING:
            continue
        source = path.read_text(encoding="utf-8")
        found = imported_testing_modules(source, name, is_package=path.name == "__init__.py")
        if found:
            bad[str(path.relative_to(ROOT))] = found
    assert not bad, f"production modules import testing modules: {bad}"


def test_every_task_shipped_here_registers_a_fixture():
    shipped = {ep.name for ep in entry_points(group="omnitune.tasks") if ep.value.startswith("omnitune.")}
    assert {"text-classification", "causal-lm", "image-classification", "speech-recognition"} <= shipped
    missing = sorted(shipped - set(list_fixtures()))
    assert not missing, f"tasks without a fixture in the omnitune.fixtures entry-point group: {missing}"
    orphans = sorted(set(list_fixtures()) - set(list_tasks()))
    assert not orphans, f"fixtures for tasks that are not registered: {orphans}"


def test_each_fixture_is_a_task_fixture_kept_in_a_testing_module():
    for name in list_fixtures():
        fixture = FIXTURES.get(name)
        assert isinstance(fixture, TaskFixture), f"{name}: {fixture!r} lacks tiny_recipe/tiny_inputs"
        where = fixture.__module__
        assert _testing_module(where), f"{name}: fixture defined in {where}, not in a testing module"
