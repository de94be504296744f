"""Honest dependencies: the Ray floor is the Ray the tests run on, no deprecated calls from our code."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import ray
import tomllib
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _declared_floor(package: str) -> Version:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in dependencies:
        match = re.match(rf"{package}(\[[^\]]*\])?>=([\w.]+)", requirement)
        if match:
            return Version(match.group(2))
    raise AssertionError(f"pyproject.toml declares no floor for {package}")


def test_ray_floor_is_the_version_installed_for_the_tests():
    pinned = re.search(r"^ray==([\w.]+)$", (REPO / ".ci" / "ray-floor.txt").read_text(), re.MULTILINE)
    assert pinned, ".ci/ray-floor.txt pins no Ray"
    assert Version(pinned.group(1)) == _declared_floor("ray"), "pyproject's floor and the pinned test Ray differ"
    assert Version(ray.__version__) == _declared_floor("ray"), (
        f"Ray {ray.__version__} is installed, but the floor CI must test is {_declared_floor('ray')}: "
        "install with `make install` (pip -c .ci/ray-floor.txt)"
    )


def test_deprecation_warnings_from_our_modules_fail_the_suite():
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old call", DeprecationWarning, "scoring.py", 1, module="pipeline.evaluation.scoring")
    with warnings.catch_warnings(record=True) as caught:  # another library's own deprecations are theirs
        warnings.warn_explicit("old call", DeprecationWarning, "x.py", 1, module="somelib.x")
    assert caught


def _imports(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("san_core", ("ray", "pipeline", "jobs")),  # the model knows no Ray
        ("schemas", ("ray", "pipeline", "jobs", "san_core")),
        ("pipeline", ("jobs",)),
    ],
)
def test_layers_point_one_way(package, forbidden):
    for path in sorted((REPO / package).rglob("*.py")):
        bad = {name for name in _imports(path) if name.split(".")[0] in forbidden}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_jobs_import_pipeline_not_each_other():
    for path in sorted((REPO / "jobs").glob("*.py")):
        if path.name == "cli.py":  # the `san` command composes the jobs
            continue
        assert not {n for n in _imports(path) if n == "jobs" or n.startswith("jobs.")}, path.name


def test_each_pipeline_part_says_what_it_owns():
    import importlib

    parts = [p.parent for p in (REPO / "pipeline").glob("*/__init__.py")] + [REPO / "pipeline"]
    assert {p.name for p in parts} >= {"pipeline", "labeling", "training", "evaluation", "exports"}
    for folder in parts:
        name = "pipeline" if folder.name == "pipeline" else f"pipeline.{folder.name}"
        doc = importlib.import_module(name).__doc__
        assert doc and len(doc.strip()) > 40, name
    for module in (REPO / "pipeline").rglob("*.py"):
        if module.name != "__init__.py":
            assert module.read_text().lstrip().startswith('"""'), module.relative_to(REPO)


def _pipeline_graph() -> dict[str, set[str]]:
    """Each module of `pipeline/` (a package by its own name) -> the `pipeline` modules it imports,
    at the top or inside a function, relative imports resolved."""
    import ast

    modules = {}
    for path in (REPO / "pipeline").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                # `from .x import y`: y may be a module of its own
                targets = [
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module for alias in node.names
                ]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_pipeline_has_no_import_cycles_at_any_depth(depth):
    """Modules, and the packages they sit in at each depth (pipeline.labeling, pipeline.store, ...),
    import one another one way only: a part can be read, tested and changed without the parts
    that use it."""
    collapsed: dict[str, set[str]] = {}
    for module, imports in _pipeline_graph().items():
        part = ".".join(module.split(".")[:depth])
        collapsed.setdefault(part, set()).update(".".join(i.split(".")[:depth]) for i in imports)
        collapsed[part].discard(part)
    assert not _cycles(collapsed), _cycles(collapsed)


def test_the_cycle_check_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not _cycles({"a": {"b"}, "b": {"c"}, "c": set()})


def test_only_the_store_lists_or_opens_result_files():
    """The labels folder has one owner: no other module names its files or reads them by hand."""
    owner = REPO / "pipeline" / "store"
    for path in sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "jobs").glob("*.py")):
        if owner in path.parents:
            continue
        text = path.read_text()
        for needle in (
            "store.layout",
            "store.scan",
            "store.row_index",
            "store.join",
            "result_file_",
            "is_own_result",
            "MANIFEST_NAME",
        ):
            assert needle not in text, f"{path.relative_to(REPO)} reaches into the store: {needle}"
