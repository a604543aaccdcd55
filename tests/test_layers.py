"""The import layers of ``sslbench``: no import cycle between its modules, no module imports one
of a higher layer, and no module imports another's private (``_``) names. Imports inside
functions count too (a late import is still a dependency).

``LAYERS`` is the one place the order is written down, lowest first; a module may import its own
layer and the layers below it. Every module must be listed (by itself or by its package)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

LAYERS: list[tuple[str, ...]] = [
    # helpers: no knowledge of methods, data or results
    ("sslbench", "sslbench.errors", "sslbench.utils", "sslbench.identity", "sslbench.registry",
     "sslbench.distributed", "sslbench.checkpoint", "sslbench.schedules", "sslbench.tracking"),
    ("sslbench.config",),  # the schema of a run and every default
    # building blocks: images, views, networks, optimisers
    ("sslbench.datasets", "sslbench.views", "sslbench.backbones", "sslbench.optim"),
    # the evaluation protocols: they evaluate a backbone and know nothing of the methods
    ("sslbench.eval",),
    ("sslbench.ssl",),  # the methods
    ("sslbench.leaderboard",),  # records and the board
    ("sslbench.recipe",),  # loading a recipe: imports every owner of a name list it checks
    ("sslbench.engine",),  # the pretraining loop
    ("sslbench.run",),  # one run: pretrain, evaluate, record
    # tools and suites over runs
    ("sslbench.suite", "sslbench.conformance", "sslbench.export", "sslbench.scaffold"),
    ("sslbench.cli", "sslbench.__main__"),  # the command line
]

# Edges that break the rule today, each with the reason it is tolerated (empty when none).
KNOWN: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    root = REPO / "sslbench"
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _source(node: ast.ImportFrom, package: str) -> str:
    """The absolute module name of ``from <source> import ...`` inside ``package``."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    return ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The sslbench modules ``name`` imports, anywhere in the file (TYPE_CHECKING blocks
    excepted)."""
    package = _package(name, path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _source(node, package)
            # `from pkg import sub` imports the submodule; `from mod import obj` the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import sslbench.x.y` of an attribute path
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    best, level = -1, None
    for i, members in enumerate(LAYERS):
        for prefix in members:
            exact = prefix == "sslbench"  # the package itself, not everything under it
            hit = module == prefix or (not exact and module.startswith(prefix + "."))
            if hit and len(prefix) > best:
                best, level = len(prefix), i
    assert level is not None, f"{module} is in no layer: add it (or its package) to LAYERS"
    return level


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_no_import_cycle():
    graph = {a: {b for b in deps if (a, b) not in KNOWN} for a, deps in _graph().items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (modules importing each other, directly or not):\n" + \
        "\n".join("  " + " <-> ".join(c) for c in cycles)


def test_no_import_against_the_flow():
    upward = sorted((a, b) for a, deps in _graph().items() for b in deps
                    if _layer(b) > _layer(a) and (a, b) not in KNOWN)
    assert not upward, "imports from a higher layer:\n" + "\n".join(
        f"  {a} -> {b}" for a, b in upward)


def test_no_private_names_across_modules():
    private = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _source(node, _package(name, path))
            if source.startswith("sslbench") and source != name:
                private += [f"{name}: {source}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, "private names imported from another module:\n  " + "\n  ".join(private)


def test_known_exceptions_still_exist():
    graph = _graph()
    stale = [edge for edge in KNOWN if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"remove these from KNOWN, the imports are gone: {stale}"


def test_the_check_sees_late_imports_and_cycles(tmp_path):
    """The checker itself: a function-local import counts, and a two-module loop is a cycle."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .leaderboard import store\n")
    modules = {"sslbench.m": src, "sslbench.leaderboard.store": src, "sslbench.leaderboard": src}
    assert _imports("sslbench.m", src, modules) == {"sslbench.leaderboard.store"}
