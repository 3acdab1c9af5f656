"""pyproject declares every third-party package src/ imports, a missing optional one is one clear
error naming its extra, and (on request) the declared minimum versions work."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from opencodegen.extras import MissingExtra

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parent.parent


def declared() -> dict[str, set[str]]:
    """Normalised distribution names per group: "main" and each extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"main": project["dependencies"], **project["optional-dependencies"]}
    name = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
    return {group: {normalise(name.match(req).group()) for req in reqs} for group, reqs in groups.items()}


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def imported_top_level_modules() -> set[str]:
    """Top-level names of every module imported anywhere in src/ (lazy imports included)."""
    names = set()
    for path in (ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"opencodegen"}


def test_every_third_party_import_is_declared():
    distributions = importlib.metadata.packages_distributions()
    groups = declared()
    everything = set().union(*groups.values())
    undeclared = {}
    for module in sorted(imported_top_level_modules()):
        owners = {normalise(d) for d in distributions.get(module, [])}
        assert owners, f"src/ imports {module!r}, which no installed distribution provides"
        if not owners & everything:
            undeclared[module] = sorted(owners)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_data_extra_holds_what_only_the_data_pipeline_needs():
    groups = declared()
    assert {"datasketch", "pyarrow"} <= groups["data"] and not {"datasketch", "pyarrow"} & groups["main"]
    assert groups["data"] <= groups["test"]  # the test suite runs the data pipeline


def test_a_missing_optional_dependency_is_one_clear_error(monkeypatch):
    from opencodegen.data.dedup import NearDedup

    monkeypatch.setitem(sys.modules, "datasketch", None)  # as if not installed
    with pytest.raises(MissingExtra, match=r"near dedup .*'datasketch'.*pip install 'opencodegen\[data\]'"):
        NearDedup()


@pytest.mark.skipif(not os.environ.get("OPENCODEGEN_CHECK_MIN_VERSIONS"),
                    reason="installs old releases into throwaway venvs: set OPENCODEGEN_CHECK_MIN_VERSIONS=1")
def test_declared_minimum_versions_work():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_min_versions.py")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
