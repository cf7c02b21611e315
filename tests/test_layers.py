"""The package's layers: every import points down, and no module imports itself back (no cycle,
not even a type-only one). Read from the source files, every import statement included."""

from __future__ import annotations

import ast
from pathlib import Path

import scoresde

ROOT = Path(scoresde.__file__).parent
ALLOWED = {  # layer -> the layers it may import (besides itself)
    "core": set(),
    "methods": {"core"},
    "nn": {"core"},
    "infra": {"core"},
    "setup": {"core", "methods", "nn", "infra"},
    "jobs": {"core", "methods", "nn", "infra", "setup"},
    "interop": {"core", "methods", "nn", "infra", "setup", "jobs"},
    "cli": {"core", "methods", "nn", "infra", "setup", "jobs", "interop"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(("scoresde", *parts))
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scoresde"):
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n for n in names if n in modules}
    return out


def test_every_module_sits_in_a_layer_and_imports_only_lower_ones():
    modules = _modules()
    top = {n for n in modules if n.count(".") == 1} - {f"scoresde.{k}" for k in ALLOWED}
    assert top == {"scoresde.__main__"}, top  # nothing loose beside the layers
    wrong = []
    for name, path in modules.items():
        layer = name.split(".")[1] if name.count(".") >= 1 else None
        if layer not in ALLOWED:
            continue
        for target in _imports(path, modules):
            other = target.split(".")[1] if target.count(".") >= 1 else None
            if other in ALLOWED and other != layer and other not in ALLOWED[layer]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_no_import_cycle():
    modules = _modules()
    graph = {
        name: {t for t in _imports(path, modules) if t != name and not t.startswith(name + ".")}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [])
            assert cycle is None, " -> ".join(cycle)
