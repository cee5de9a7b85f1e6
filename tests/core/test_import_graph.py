"""The product's import graph (jobs/, worker/, daemon/) has no cycles.

Pure: the sources are parsed with ``ast``, nothing is imported. Every import counts: at module level, inside a
function (a deferred import is still a dependency, and a circle through one waits for a refactor that hoists it) and
under ``if TYPE_CHECKING:`` (a type-only circle is still two modules that cannot be understood one without the other).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "worker", "daemon")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Module name -> source file, for every module of the product packages."""
    return {_module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, wherever it is (module level, functions, ``if TYPE_CHECKING:``)."""
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The product module that importing ``name`` loads: the longest known prefix, or None (a third-party name)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """importer -> {imported product module: first line importing it}."""
    graph: dict[str, dict[str, int]] = {}
    for mod, path in modules.items():
        edges: dict[str, int] = {}
        is_pkg = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join([*pkg, base] if base else pkg)
                # ``from pkg import sub`` loads pkg.sub when sub is a module, else only pkg
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for name in names:
                target = _target(name, modules)
                if target is not None and target != mod:
                    edges[target] = min(edges.get(target, node.lineno), node.lineno)
        graph[mod] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is one knot of circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return components


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component, as a closed path (the shortest through its first module)."""
    cycles = []
    for comp in strongly_connected(graph):
        members = set(comp)
        start = comp[0]
        # shortest way back to start, inside the component (BFS)
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w not in members:
                        continue
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = prev.get(v)
        cycles.append([*path, start])
    return cycles


def _describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    steps = [f"{a} -> {b} ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    knot = next(c for c in strongly_connected(graph) if cycle[0] in c)
    return (" -> ".join(cycle) + f"   (modules in this knot: {', '.join(knot)})\n      " + "\n      ".join(steps))


def test_finder_reports_a_cycle_with_its_path() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_graph_counts_deferred_type_only_and_relative_imports(tmp_path: Path) -> None:
    files = {
        "p/__init__.py": "",
        "p/a.py": "import os\n\ndef f():\n    from p import b\n",  # inside a function
        "p/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.c import X\n",  # type-only
        "p/c.py": "from . import a\nfrom .sub.d import Y\n",  # relative, and a name from a module
        "p/sub/__init__.py": "",
        "p/sub/d.py": "import p.sub\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(product_modules(tmp_path, ("p",)))
    assert graph["p.a"] == {"p.b": 4}  # os is not part of the product
    assert graph["p.b"] == {"p.c": 3}
    assert graph["p.c"] == {"p.a": 1, "p.sub.d": 2}
    assert graph["p.sub.d"] == {"p.sub": 1}
    assert find_cycles(graph) == [["p.a", "p.b", "p.c", "p.a"]]


def test_product_import_graph_has_no_cycles() -> None:
    modules = product_modules()
    graph = import_graph(modules)
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the product was parsed, not an empty tree
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in the product:\n  " + "\n  ".join(
        _describe(c, graph, modules) for c in cycles)
