"""The layout holds: core's modules depend only downwards, form no import circle, import no other
module's private names and name no task; no core file passes 600 lines.

Read from the syntax trees, so every import counts: inside functions, under ``TYPE_CHECKING``,
relative or absolute. Each test prints the offending module and line.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CORE = "omnitune.core"
DOMAINS = ("omnitune.text", "omnitune.vision", "omnitune.speech")
MAX_LINES = 600

# Bottom to top: a module imports its own layer or a lower one. A first-level name below
# omnitune.core is a sub-package (base/, loop/, ...) or a top-level module (runs.py, api.py, ...).
LAYERS: list[tuple[str, ...]] = [
    ("base",),
    ("adapters",),
    ("loop",),
    ("runs",),
    ("evaluation",),
    ("deploy",),
    ("components", "pipeline"),  # recipe sections -> components, and train/evaluate as stages
    ("studies",),
    ("api",),
    ("cli",),
]
LAYER_OF = {part: i for i, parts in enumerate(LAYERS) for part in parts}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    line: int
    target: str  # the imported module (a package's __init__ when a name comes from it)
    name: str | None  # the name taken from ``target`` (None: the module itself)
    local: str | None  # the name it is bound to in ``source`` (None: ``import a.b`` binds ``a``)

    def where(self, modules: dict[str, Path]) -> str:
        return f"{modules[self.source]}:{self.line}"


def _package_modules(package: str) -> dict[str, Path]:
    """module name -> file, for every .py file of an installed omnitune package."""
    root = Path(importlib.import_module(package).__path__[0])
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        if "__pycache__" in rel:
            continue
        rel = rel[:-1] if rel[-1] == "__init__" else rel
        out[".".join((package, *rel))] = path
    return out


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in (CORE, *DOMAINS):
        found.update(_package_modules(package))
    return found


@lru_cache(maxsize=None)
def tree(module: str) -> ast.Module:
    path = modules()[module]
    return ast.parse(path.read_text(), filename=str(path))


def _moved(name: str) -> str:
    """A module path from before core's split (omnitune.core.trainer) as the module it now is."""
    from omnitune.core import MOVED

    prefix, _, rest = name.partition(CORE + ".")
    if prefix or not rest:
        return name
    head, _, tail = rest.partition(".")
    return f"{CORE}.{MOVED[head]}" + (f".{tail}" if tail else "") if head in MOVED else name


@lru_cache(maxsize=None)
def imports(module: str) -> tuple[Import, ...]:
    """Every import in ``module``'s file that names an omnitune module, resolved to absolute names."""
    known = modules()
    is_package = modules()[module].name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _moved(alias.name)
                if target.startswith("omnitune."):
                    out.append(Import(module, node.lineno, target, None, alias.asname))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            target = _moved(target)
            if not target.startswith("omnitune"):
                continue
            for alias in node.names:
                sub = _moved(f"{target}.{alias.name}")
                local = alias.asname or alias.name
                if sub in known:  # ``from . import trainer``: the submodule itself
                    out.append(Import(module, node.lineno, sub, None, local))
                else:
                    out.append(Import(module, node.lineno, target, alias.name, local))
    return tuple(out)


def core_modules() -> list[str]:
    return [m for m in modules() if m == CORE or m.startswith(CORE + ".")]


def core_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in core_modules()}
    for m in graph:
        for imp in imports(m):
            if imp.target in graph and imp.target != m:
                graph[m].add(imp.target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the graph's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


def layer(module: str) -> int | None:
    if module == CORE:
        return -1  # the package's own __init__ (the old-path alias table) imports nothing of core
    return LAYER_OF.get(module[len(CORE) + 1:].split(".")[0])


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def docstring_nodes(t: ast.Module) -> set[int]:
    out = set()
    for node in ast.walk(t):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


# ---- the checks -----------------------------------------------------------------------------------


def test_the_walk_sees_core_and_the_domains():
    """Guards the checks below against passing on nothing: the walk finds the modules and the
    imports (a relative one inside a function included) that are there."""
    found = modules()
    for name in ("omnitune.core.api", "omnitune.core.runs", "omnitune.core.pipeline",
                 "omnitune.core.loop.trainer", "omnitune.text.classification"):
        assert name in found
    api_targets = {i.target for i in imports("omnitune.core.api")}
    assert {"omnitune.core.pipeline", "omnitune.core.runs"} <= api_targets
    # export_run imports the run folder's names inside the function
    assert any(i.target == "omnitune.core.runs" for i in imports("omnitune.core.deploy.export"))
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"], ["d"]]


def test_every_core_module_has_a_layer():
    missing = sorted(m for m in core_modules() if layer(m) is None)
    assert not missing, ("core modules outside the layer table (add them to LAYERS in "
                         "tests/core/test_architecture.py):\n" + "\n".join(f"  {modules()[m]}" for m in missing))


def test_no_import_circle_in_core():
    graph = core_graph()
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    lines = []
    for circle in circles:
        lines.append("circle: " + " <-> ".join(circle))
        members = set(circle)
        edges = {(imp.where(modules()), m, imp.target) for m in circle for imp in imports(m)
                 if imp.target in members and imp.target != m}
        lines += [f"  {where}: {m} imports {target}" for where, m, target in sorted(edges)]
    assert not circles, "import circles between core modules:\n" + "\n".join(lines)


def test_core_imports_only_its_own_layer_or_lower():
    names = " < ".join("/".join(parts) for parts in LAYERS)
    bad = []
    for m in core_modules():
        mine = layer(m)
        for imp in imports(m):
            theirs = layer(imp.target) if imp.target.startswith(CORE) else None
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"  {imp.where(modules())}: {m} imports {imp.target}"
                           + (f" ({imp.name})" if imp.name else ""))
    assert not bad, f"imports that go up the layers ({names}):\n" + "\n".join(bad)


def test_core_imports_no_domain_package():
    bad = [f"  {imp.where(modules())}: {m} imports {imp.target}"
           for m in core_modules() for imp in imports(m) if imp.target.startswith(DOMAINS)]
    assert not bad, "core finds tasks through the registry, never by importing a domain:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_module_boundary():
    """``from omnitune.x import _name`` and ``module._name`` on an imported omnitune module, in core
    and the domain packages."""
    bad = []
    for m in modules():
        for imp in imports(m):
            if imp.name is not None and is_private(imp.name) and imp.target != m:
                bad.append(f"  {imp.where(modules())}: {m} imports {imp.target}.{imp.name}")
        # names bound to another omnitune module: ``from ..adapters import peft as peft_lib``
        bound = {i.local for i in imports(m) if i.name is None and i.local and i.target != m}
        for node in ast.walk(tree(m)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in bound and is_private(node.attr):
                bad.append(f"  {modules()[m]}:{node.lineno}: {m} uses {node.value.id}.{node.attr}")
    assert not bad, "private names used outside their module (make them public or move them):\n" + "\n".join(bad)


def command_names(t: ast.Module) -> set[int]:
    """The first arguments of ``subparsers.add_parser(NAME, ...)``: the CLI's own words (the
    ``omnitune chat`` command is not the chat task, whichever task serves it)."""
    return {id(node.args[0]) for node in ast.walk(t)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_parser"
            and node.args and isinstance(node.args[0], ast.Constant)}


def test_core_holds_no_task_name():
    """No string constant in core equals a registered task's name (docstrings and CLI command names
    aside): core reaches tasks through the registry and the optional protocols, never by name."""
    from omnitune.core.base.registry import list_tasks

    tasks = set(list_tasks())
    assert tasks, "no task registered: the check would pass on nothing"
    bad = []
    for m in core_modules():
        t = tree(m)
        skip = docstring_nodes(t) | command_names(t)
        hits = {(node.lineno, node.value) for node in ast.walk(t)
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in tasks
                and id(node) not in skip}
        bad += [f"  {modules()[m]}:{line}: {value!r}" for line, value in sorted(hits)]
    assert not bad, "task names in core (tasks declare what core needs to know about them):\n" + "\n".join(bad)


def test_no_core_file_over_600_lines():
    long = sorted((len(modules()[m].read_text().splitlines()), str(modules()[m])) for m in core_modules())
    bad = [f"  {path}: {n} lines" for n, path in long if n > MAX_LINES]
    assert not bad, f"core files over {MAX_LINES} lines:\n" + "\n".join(bad)
