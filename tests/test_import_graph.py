"""No import circle among the project's own modules (issue #15: serving's app ↔ deployments ↔ jobs circle was held
together by function-local imports, so those count here too), and the layers of DESIGN.md kept (``LAYER_RULES``).
For circles, imports under ``if TYPE_CHECKING:`` never run and do not count; for the layers they do (a type named
across a layer is a dependency on it). The graph is read from the source with ``ast``; nothing is imported."""

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


def imported_names(tree: ast.AST, package: str, *, type_checking: bool = False) -> set[str]:
    """Every dotted name an import statement anywhere in the module (functions included) may load; with
    ``type_checking``, those under ``if TYPE_CHECKING:`` too."""
    skip, names = (set() if type_checking else type_checking_nodes(tree)), set()
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


def import_graph(root: Path, packages: tuple[str, ...], *, type_checking: bool = False) -> dict[str, set[str]]:
    """module → the project's modules it imports (the nearest enclosing module of each imported name); with
    ``type_checking``, counting the imports under ``if TYPE_CHECKING:``."""
    paths = {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}

    def owner(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in paths.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        deps = {owner(n) for n in imported_names(tree, package, type_checking=type_checking)}
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


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# The methods' side: the methods, and what runs a method over rows (``interp_ray.explain_rows``, the session).
METHODS = ("interp_ray.explainers", "interp_ray.session", "interp_ray.explain_rows")
KIT = ("interp_ray.testing",)

# name → (the modules it binds, given a module's name; what they must not import). From DESIGN.md's direction: jobs
# and serving → explainers and metrics → the spine (activations, stores) → data and models.
LAYER_RULES: dict[str, tuple] = {
    # Running methods over rows is the session's side (``interp_ray.explain_rows``), not the store's.
    "a store never imports a method": (
        lambda m: within(m, ("interp_ray.store", "interp_ray.saliency_store")), METHODS),
    # Metrics and explainers are siblings (what both need, such as the blur, lives in a neutral module).
    "a metric takes arrays, not a method": (lambda m: within(m, ("interp_ray.metrics",)), METHODS),
    "a dataset never runs a classifier": (
        lambda m: within(m, ("interp_ray.data",)),
        ("interp_ray.models", "interp_ray.activations", "interp_ray.explainers", "interp_ray.checkpoint")),
    # The test kit drives every consumer (the CLI, Ray Data, the HTTP API), so it alone sits above them.
    "nothing in interp_ray imports jobs or serving": (
        lambda m: within(m, ("interp_ray",)) and not within(m, KIT), ("jobs", "serving")),
    "nothing but the test kit imports the test kit": (lambda m: not within(m, KIT), KIT),
}


def broken(graph: dict[str, set[str]], rule: str) -> list[str]:
    bound, forbidden = LAYER_RULES[rule]
    return sorted(f"{m} imports {d}" for m in graph if bound(m) for d in graph[m] if within(d, forbidden))


@pytest.mark.parametrize("rule", LAYER_RULES)
def test_the_layers_hold(rule):
    graph = import_graph(REPO, PACKAGES, type_checking=True)
    assert not broken(graph, rule), f"{rule}: " + "; ".join(broken(graph, rule))


def test_the_layer_walk_sees_each_side():
    graph = import_graph(REPO, PACKAGES, type_checking=True)
    assert "interp_ray.saliency_store" in graph["interp_ray.explain_rows"]
    assert {"interp_ray.data.scenes", "interp_ray.metrics.saliency", "interp_ray.testing.conformance"} <= set(graph)
    assert "jobs.explain_dataset" in graph["interp_ray.testing.conformance"]   # the kit's exemption is used
    assert "interp_ray.explainers" in graph["interp_ray.testing.conformance"]


# One import across each rule's line, written three ways (each counts): rule → (module, the import it must not have).
BREAKS = {
    "a store never imports a method": ("interp_ray/store.py", "interp_ray.explainers.base"),
    "a metric takes arrays, not a method": ("interp_ray/metrics/saliency.py", "interp_ray.session"),
    "a dataset never runs a classifier": ("interp_ray/data/scenes.py", "interp_ray.checkpoint"),
    "nothing in interp_ray imports jobs or serving": ("interp_ray/activations.py", "serving.api"),
    "nothing but the test kit imports the test kit": ("jobs/explain.py", "interp_ray.testing.specimens"),
}
WRITTEN = {
    "top": "import {mod}\n",
    "local": "def late():\n    from {pkg} import {leaf}\n",
    "type_checking": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from {mod} import Thing\n",
}


@pytest.mark.parametrize("how", WRITTEN)
@pytest.mark.parametrize("rule", LAYER_RULES)
def test_each_layer_rule_catches_an_import_across_its_line(tmp_path, rule, how):
    module, target = BREAKS[rule]
    files = {p: "" for path in (module, target.replace(".", "/") + ".py") for p in parents(path)}
    pkg, _, leaf = target.rpartition(".")
    files[target.replace(".", "/") + ".py"] = "Thing = 1\n"
    write(tmp_path, files)
    packages = ("interp_ray", "jobs", "serving")
    for p in packages:
        (tmp_path / p).mkdir(exist_ok=True)
    assert not broken(import_graph(tmp_path, packages, type_checking=True), rule)
    write(tmp_path, {module: WRITTEN[how].format(mod=target, pkg=pkg, leaf=leaf)})
    # (``from pkg import leaf`` loads the package too: both are across the line)
    assert f"{module.removesuffix('.py').replace('/', '.')} imports {target}" in broken(
        import_graph(tmp_path, packages, type_checking=True), rule)


def parents(path: str) -> list[str]:
    """``path`` and the ``__init__.py`` of each package above it."""
    parts = path.split("/")
    return [*("/".join(parts[:i] + ["__init__.py"]) for i in range(1, len(parts))), path]


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


def test_the_library_and_its_methods_load_no_pytest():
    """Only the test kit's modules need pytest (a dev dependency): importing the library, its session and every
    registered method (the registry's scan) does not load it, nor does importing the kit's package itself."""
    import subprocess
    import sys

    code = ("import sys, interp_ray, interp_ray.session, interp_ray.testing\n"
            "from interp_ray.explainers import explainer_names\n"
            "assert len(explainer_names()) > 5\n"
            "assert 'pytest' not in sys.modules, 'pytest was loaded'\n"
            "import interp_ray.testing.conformance\n"
            "assert 'pytest' in sys.modules\n")  # the check itself can see pytest load
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
