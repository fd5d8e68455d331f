"""The package's shape, checked: no import cycles, no private names across modules, short functions, docstrings."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "recommender"
#: Functions may be this long (lines of code, docstring excluded); the UI layout in app.py is split into builders.
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = ast.parse(path.read_text(), filename=str(path))
    return found


def _is_package(name: str) -> bool:
    return (ROOT.joinpath(*name.split(".")) / "__init__.py").exists()


def _is_module(name: str) -> bool:
    return ROOT.joinpath(*name.split(".")).with_suffix(".py").exists() or _is_package(name)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(name: str, tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of the package's own modules, lazy ones too."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    base = name.split(".") if _is_package(name) else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "recommender":
                continue
            names = [alias.name for alias in node.names]
            if node.module is None or _is_package(target):  # `from . import x` or `from .pkg import module`
                subs = [f"{target}.{n}" for n in names if _is_module(f"{target}.{n}")]
                found += [(s, [], node.lineno) for s in subs]
                names = [n for n in names if f"{target}.{n}" not in subs]
                if not names:
                    continue
            found.append((target, names, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("recommender.")]
    return found


def test_no_import_cycles():
    trees = modules()
    graph = {
        name: {target for target, _, _ in imports(name, tree) if target in trees and target != name}
        for name, tree in trees.items()
    }
    # A package stands for its __init__: importing it runs what __init__ imports, so cycles through it count.
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_are_imported_across_modules():
    offences = []
    for name, tree in modules().items():
        for target, names, line in imports(name, tree):
            offences += [
                f"{name}:{line} imports {target}.{n}" for n in names if n.startswith("_") and not n.endswith("__")
            ]
    assert not offences, "\n".join(offences)


def test_every_module_says_what_it_owns():
    missing = [name for name, tree in modules().items() if not ast.get_docstring(tree)]
    assert not missing, f"modules without a docstring: {missing}"


def test_functions_are_short():
    long = []
    for path in [ROOT / "app.py", *sorted(PACKAGE.rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)
