"""No import circle among the project's own modules (issue #15: serving's app ↔ deployments ↔ jobs circle was held
together by function-local imports, so those count here too). Imports under ``if TYPE_CHECKING:`` never run and
do not count. The graph is read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("interp_ray", "jobs", "serving")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    return {id(n) for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body for n in ast.walk(stmt)}


def imported_names(tree: ast.AST, package: str) -> set[str]:
    """Every dotted name an import statement anywhere in the module (functions included) may load."""
    skip, names = type_checking_nodes(tree), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from the importing module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return names


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module → the project's modules it imports (the nearest enclosing module of each imported name)."""
    paths = {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}

    def owner(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in paths.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = {owner(n) for n in imported_names(ast.parse(path.read_text(), str(path)), package)}
        graph[mod] = {d for d in deps if d and d != mod}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return err.args[1]
    return None


def test_the_project_has_no_import_circle():
    graph = import_graph(REPO, PACKAGES)
    assert {"interp_ray.store", "jobs.pipeline", "serving.app"} <= set(graph)   # the walk saw the packages
    assert "interp_ray.store" in graph["jobs.extract_activations"]
    assert cycle(graph) is None, " → ".join(cycle(graph))


def test_stores_and_metrics_import_no_method():
    """DESIGN.md's direction: a store never imports the methods it stores, and metrics and explainers are siblings
    (what both need, such as the blur, lives in a neutral module). Running methods over rows is the session's side
    (``interp_ray.explain_rows``), not the store's."""
    graph = import_graph(REPO, PACKAGES)
    methods = ("interp_ray.explainers", "interp_ray.session", "interp_ray.explain_rows")
    metrics = [m for m in graph if m.startswith("interp_ray.metrics")]
    for mod in ("interp_ray.store", "interp_ray.saliency_store", *metrics):
        wrong = sorted(d for d in graph[mod] if d.startswith(methods))
        assert not wrong, f"{mod} imports {wrong}"
    assert "interp_ray.saliency_store" in graph["interp_ray.explain_rows"]   # the walk saw the new side


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.parametrize("b_imports_a", [
    "def late():\n    from pkg import a\n",              # function-local: still a circle when it runs
    "from . import a\n",                                  # relative
    "import pkg.a\n",
])
def test_a_circle_is_found_however_it_is_written(tmp_path, b_imports_a):
    write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import thing\n", "pkg/b.py": b_imports_a})
    found = cycle(import_graph(tmp_path, ("pkg",)))
    assert found is not None and set(found) == {"pkg.a", "pkg.b"}


def test_type_checking_imports_are_not_a_circle(tmp_path):
    write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import thing\n",
                     "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n"})
    assert cycle(import_graph(tmp_path, ("pkg",))) is None
