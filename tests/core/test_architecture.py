"""The package's rooms and the one direction imports may go (``docs/concepts.md`` draws it).

Every import inside ``patchwork`` — at module level or inside a function — may name a module of
its own room or of a room listed before it, never one after it, and no chain of imports may come
back to where it started. The order is declared here, once.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "patchwork"

#: Rooms from the bottom up: each may import itself and those before it.
ROOMS = (
    "_version",
    "errors",
    "files",
    "plugins",
    "study",
    "store",
    "data",
    "models",
    "testbed",
    "loading",
    "patching",
    "methods",
    "engine",
    "analysis",
    "bench",
    "cli",
    "__main__",
    "",  # the package's own __init__: the public names, re-exported lazily
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(source: str, module: str, modules: set[str]) -> Iterator[str]:
    """The patchwork modules ``source`` imports (``from patchwork import x`` names ``x`` when it
    is a module)."""
    package = module if module in PACKAGES else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("patchwork"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if not base.startswith("patchwork"):
                continue
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base


def import_graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    """Module → the patchwork modules it imports, for ``sources`` (module name → source text)."""
    modules = set(sources)
    return {
        module: {target for target in imports(text, module, modules) if target != module}
        for module, text in sources.items()
    }


PACKAGES = {module_name(path) for path in PACKAGE.rglob("__init__.py")}


def package_sources() -> dict[str, str]:
    return {module_name(path): path.read_text() for path in PACKAGE.rglob("*.py")}


def upward_imports(graph: Mapping[str, set[str]]) -> list[str]:
    order = {name: index for index, name in enumerate(ROOMS)}
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if order[room(target)] > order[room(module)]
    )


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_lives_in_a_declared_room() -> None:
    undeclared = {room(module) for module in package_sources()} - set(ROOMS)
    assert not undeclared, f"add these rooms to ROOMS (and to docs/concepts.md): {undeclared}"


def test_imports_only_go_down() -> None:
    assert upward_imports(import_graph(package_sources())) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph(package_sources())) == []


@pytest.mark.parametrize(
    ("planted", "finds"),
    [
        (
            {"patchwork.study.schema": "from patchwork.engine.runner import run_study\n"},
            "upward",
        ),
        (
            {"patchwork.models.adapter": "def f():\n    from patchwork.models import gemma3n\n"},
            "cycle",
        ),
        ({"patchwork.data.sample": "from ..methods import method\n"}, "upward"),
    ],
)
def test_the_checks_find_a_planted_bad_import(planted: dict[str, str], finds: str) -> None:
    sources = package_sources()
    for module, line in planted.items():
        sources[module] += line
    graph = import_graph(sources)
    if finds == "upward":
        assert upward_imports(graph), "a planted upward import went unnoticed"
    else:
        assert cycles(graph), "a planted cycle went unnoticed"


def test_real_model_code_does_not_reach_into_the_testbed() -> None:
    """The testbed is one model source among others: only its loader (``loading``) and the
    commands that train or grade it (``bench``, ``cli``) import it; the methods, the engine and
    the analysis run on any model the same way."""
    graph = import_graph(package_sources())
    allowed = {"testbed", "loading", "bench", "cli"}
    reaching = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if room(target) == "testbed" and room(module) not in allowed
    )
    assert reaching == []
