"""The library's layout (DESIGN.md): phases share only the core, the model layer and the
artifact layer; no import cycles; no module over ~600 lines."""

import ast
from pathlib import Path

import pytest
from conftest import REPO

SRC = REPO / "src" / "circuitflow"
PHASES = {
    "alignment",
    "datasets",
    "extract",
    "patching",
    "projectors",
    "report",
    "sae",
    "stats",
    "steering",
    "vectors",
}
SHARED = {
    "core",
    "models",
    "evaluators",
    "store",
    "workflow",
    "devices",
    "cli",
    "tracking",
    "results",
    "__init__",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every circuitflow module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {f for f in found if f.startswith("circuitflow")}


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_is_a_phase_or_shared():
    assert {_top(m) for m in _modules()} <= PHASES | SHARED


def test_no_phase_imports_another_phase():
    modules = _modules()
    crossings = []
    for name, path in modules.items():
        own = _top(name)
        for target in _imports(name, path):
            other = _top(target)
            if other in PHASES and other != own:
                crossings.append(f"{name} -> {target}")
            if own in SHARED and other in PHASES:
                crossings.append(f"{name} (shared) -> {target}")
    assert crossings == []


def test_no_import_cycles():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for t in _imports(name, path):
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                targets.add(t)
        graph[name] = targets
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_over_600_lines(path):
    assert len(path.read_text().splitlines()) <= 600, path
