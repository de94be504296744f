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
