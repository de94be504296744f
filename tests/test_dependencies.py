"""Honest dependencies: declared exactly as imported, every version from the lock (whose Ray is
the declared floor), no deprecated calls from our code."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import warnings
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import pytest
import ray
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LOCAL_MODULES = {"san_core", "pipeline", "jobs", "schemas", "benchmarks", "tests"}
# declared, not imported by name: fsspec loads s3fs for s3:// URIs
LOADED_BY_OTHERS = {"s3fs"}
# the test extra's tools, run rather than imported: the README's pandas block, the linter, the locker
TEST_TOOLS = {"pandas", "ruff", "uv"}


def _declared_floor(package: str) -> Version:
    for requirement in PROJECT["dependencies"]:
        match = re.match(rf"{package}(\[[^\]]*\])?>=([\w.]+)", requirement)
        if match:
            return Version(match.group(2))
    raise AssertionError(f"pyproject.toml declares no floor for {package}")


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _imported_distributions(*folders: str) -> set[str]:
    """The distributions whose modules the code in these folders imports (absolute imports)."""
    owners = packages_distributions()
    found = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in LOCAL_MODULES or top not in owners:
                        continue  # the standard library, ours, or a test helper module
                    found.add(canonicalize_name(owners[top][0]))
    return found


def test_the_lock_holds_the_declared_ray_floor_and_the_tests_run_on_it():
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {p["name"]: Version(p["version"]) for p in lock["package"] if p["name"] == "ray"}
    assert locked == {"ray": _declared_floor("ray")}, "uv.lock's Ray is not pyproject's floor: see [tool.uv]"
    assert Version(ray.__version__) == _declared_floor("ray"), (
        f"Ray {ray.__version__} is installed, but the floor CI must test is {_declared_floor('ray')}: `make install`"
    )


def test_declared_dependencies_are_exactly_those_imported():
    runtime = _names(PROJECT["dependencies"])
    test = _names(PROJECT["optional-dependencies"]["test"])
    imported = _imported_distributions("san_core", "pipeline", "jobs", "schemas")
    assert imported == runtime - LOADED_BY_OTHERS, (
        f"imported, not declared: {sorted(imported - runtime)}; declared, not imported: {sorted(runtime - imported)}"
    )
    by_tests = _imported_distributions("tests") - runtime
    unused = sorted(test - TEST_TOOLS - by_tests)
    assert by_tests == test - TEST_TOOLS, (
        f"tests import, not in the test extra: {sorted(by_tests - test)}; unused: {unused}"
    )


def test_every_installed_dependency_is_at_the_version_the_lock_pins():
    """`make` installs requirements/test.txt, exported from uv.lock: this environment is the lock's."""
    wrong = []
    for line in (REPO / "requirements" / "test.txt").read_text().splitlines():
        if not line or line.startswith(("#", " ")):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            installed = "missing"
        if installed not in requirement.specifier:
            wrong.append(f"{requirement.name} {installed}, locked {requirement.specifier}")
    assert not wrong, f"not the locked versions (run `make install` again): {wrong}"


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


def test_the_device_kit_takes_each_package_at_the_locks_pin_for_the_lent_machines_python():
    """benchmarks/device/make_kit.py downloads what a lent GPU machine lacks at the pins of
    requirements/runtime.txt for its Python (3.12): a package the lock dropped or stopped pinning
    there would fail a session with device time running, not here."""
    spec = importlib.util.spec_from_file_location("make_kit", REPO / "benchmarks" / "device" / "make_kit.py")
    make_kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_kit)
    pins = [Requirement(pin) for pin in make_kit.pinned("3.12")]
    assert sorted(pin.name for pin in pins) == sorted(make_kit.MISSING_ON_THE_IMAGE)
    assert all(len(pin.specifier) == 1 and next(iter(pin.specifier)).operator == "==" for pin in pins)
    assert {"ray", "pydantic", "duckdb", "open-clip-torch"} <= _names(PROJECT["dependencies"]) & {p.name for p in pins}
