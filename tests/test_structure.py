"""The shape of the package: the core knows no application, and its modules import one
another without a circle (issue 18). Read from the source with `ast`: an import under
`if TYPE_CHECKING:` is for the type checker only and never runs, so it is not an edge."""

from __future__ import annotations

import ast
from pathlib import Path

import lorebase

PACKAGE = Path(lorebase.__file__).resolve().parent
APPS = "lorebase.apps"  # the example applications: loaded through APPS, never imported by the core


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: dict[str, Path], top_level_only: bool) -> set[str]:
    """The lorebase modules `name` imports: at import time only, or anywhere (in functions too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(known)
            found.update(submodules)
            if len(submodules) < len(node.names):  # a name defined in `base` itself
                found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def graph(top_level_only: bool) -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known, top_level_only) for name, path in known.items()}


def is_app(name: str) -> bool:
    return name == APPS or name.startswith(APPS + ".")


def test_the_graph_reader_sees_the_imports_it_should():
    edges = graph(top_level_only=False)
    assert "lorebase.chain" in edges["lorebase.app"]
    assert "lorebase.chain" in edges["lorebase.apps.notes"]  # an app imports the core, not the reverse
    # check.py imports the app factory inside a function, and no app type only for mypy
    assert "lorebase.app" in edges["lorebase.check"] and "lorebase.app" not in graph(True)["lorebase.check"]
    assert "lorebase.app" not in edges["lorebase.extension"]  # under `if TYPE_CHECKING:` only


def test_no_core_module_imports_an_app():
    edges = graph(top_level_only=False)
    offenders = {name: sorted(filter(is_app, targets)) for name, targets in edges.items()
                 if not is_app(name) and any(map(is_app, targets))}
    assert not offenders, f"core modules importing an application: {offenders}"


def test_the_check_orchestrator_imports_no_owners_check():
    """`lorebase check` runs the checks each part registers (Extension.checks) and takes their
    findings as data: check.py imports no owner's check module (it used to call the file
    store's and parse what it printed), and no owner's check imports another's."""
    edges = graph(top_level_only=False)
    owners = {"lorebase.identity.check", "lorebase.files.check"}
    assert not owners & edges["lorebase.check"], sorted(owners & edges["lorebase.check"])
    for owner in owners:
        assert not (owners - {owner}) & edges[owner], (owner, sorted(edges[owner]))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := walk(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_at_import_time():
    """`from . import x`, x a module, is an edge to x alone: the package it sits in is being
    imported already, and that is no circle."""
    edges = graph(top_level_only=True)
    cycle = find_cycle(edges)
    assert cycle is None, " → ".join(cycle or [])


def test_no_import_circle_even_through_imports_inside_functions():
    """A function-level import is still a dependency: the packages stay layered (an owner's
    check, a route, a task never import back the module that runs them)."""
    cycle = find_cycle(graph(top_level_only=False))
    assert cycle is None, " → ".join(cycle or [])
