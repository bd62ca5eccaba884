"""The package's shape: layers import only downward, and nothing imports in a circle.

Read from the source (every import, type-only ones included), so a new module that
reaches up a layer fails here before it can grow into a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import secureml.key_management as km

PACKAGE = Path(km.__file__).parent
# What the backends may use: the layers below them, never the manager's.
BELOW_BACKENDS = {
    "errors",
    "_boundary",
    "_bridge",
    "_auth",
    "_config",
    "_encoding",
    "_memo",
    "_names",
    "_process",
    "_validate",
    "_warnings",
}


#: Type-only imports allowed to point up a layer, each with its reason. The spec's methods
#: are typed with the manager class they build; at run time the facade registers that
#: class with the spec (``register_manager_class``), so nothing imports upward.
TYPE_ONLY_UPWARD = {("_spec", "_manager")}


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            found.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (relative imports, resolved)."""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    type_only = _type_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = ".".join([*package, node.module or ""])
            if (
                id(node) in type_only
                and (".".join(here), target.rpartition(".")[2]) in TYPE_ONLY_UPWARD
            ):
                continue
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            if node.module:
                found.add(".".join([*base, node.module]).removeprefix("__init__."))
            else:
                found.update(".".join([*base, alias.name]) for alias in node.names)
    return {name for name in found if name and name != "__init__"}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_import_cycles() -> None:
    graph = _graph()
    graph.pop("__init__", None)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if state.get(nxt) is None:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [])


def test_backends_import_nothing_from_the_manager_layer() -> None:
    for name, imported in _graph().items():
        if not name.startswith("backends"):
            continue
        upward = {m for m in imported if not m.startswith("backends") and m not in BELOW_BACKENDS}
        assert not upward, f"{name} imports {sorted(upward)} from above the backends"


def test_the_facade_is_the_only_module_that_knows_every_service() -> None:
    """Services take the core; none of them imports the facade."""
    for name, imported in _graph().items():
        if name not in ("_manager", "_amanager", "_default", "__init__"):
            assert "_manager" not in imported, f"{name} imports the facade"
