"""The layers of src/opencodegen hold: no module imports a higher layer, no two packages import each other.

Every import counts, the ones inside functions too (a lazy import is still a dependency). The
order is docs/architecture.md's; a module not named here fails the test until it is placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "opencodegen"

# Bottom to top; a name is a module or a package of opencodegen ("" is the package's own __init__:
# the `load` facade). A module may import its own layer and those below it.
LAYERS = (
    ("errors", "config", "devices", "extras", "user_cache", "hub", "default_model", "io"),
    ("tokenizer", "kernels", "model", "quantize"),
    ("checkpoint", ""),
    ("generation",),
    ("execution",),
    ("synthesis",),
    ("data",),
    ("training",),
    ("evaluation",),
    ("serving",),
    ("commands", "cli_options", "cli", "__main__"),
)

# Upward imports kept on purpose, (importer, imported) with the reason; nothing else may join.
ALLOWED = {
    # CodeGenForCausalLM.save_pretrained/from_pretrained (the HF-style API that tests, benchmarks and
    # training call) delegate to checkpoint.save_model/load_model.
    ("opencodegen.model", "opencodegen.checkpoint"),
}

RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, source: str | None = None) -> set[str]:
    """Every opencodegen module that `path` (or `source` read as that file) imports, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            # `from opencodegen import hub` imports the module opencodegen.hub
            found.update(f"{target}.{a.name}" if is_module(f"{target}.{a.name}") else target for a in node.names)
    return {m for m in found if m == "opencodegen" or m.startswith("opencodegen.")}


def unit(module: str) -> str:
    """The layer entry a module belongs to: its subpackage or top-level module ("" for the package)."""
    return module.split(".")[1] if "." in module else ""


GRAPH = {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert {unit(m) for m in GRAPH} - RANK.keys() == set(), "place the new module in LAYERS"


def test_no_module_imports_a_higher_layer():
    upward = sorted((m, t) for m, targets in GRAPH.items() for t in targets
                    if RANK[unit(t)] > RANK[unit(m)] and (m, t) not in ALLOWED)
    assert upward == [], f"upward imports (move the code down, don't extend ALLOWED): {upward}"


def test_allowed_exceptions_still_exist():
    assert all(t in GRAPH[m] for m, t in ALLOWED), "drop the ALLOWED entry that no longer applies"


def test_no_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for m, targets in GRAPH.items():
        edges.setdefault(unit(m), set()).update(unit(t) for t in targets if (m, t) not in ALLOWED)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [t for t in edges.get(start, ()) if t != start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        return False

    packages = [u for u in edges if u and (ROOT / u / "__init__.py").is_file()]
    cycles = sorted(p for p in packages if reaches(p, p))
    assert cycles == [], f"packages on an import cycle: {cycles}"


@pytest.mark.parametrize("source, expected", [
    ("from opencodegen import hub", {"opencodegen.hub"}),
    ("from opencodegen import __version__", {"opencodegen"}),
    ("def f():\n    from ..serving.app import create_app", {"opencodegen.serving.app"}),
    ("import opencodegen.cli as cli", {"opencodegen.cli"}),
])
def test_imports_sees_lazy_relative_and_submodule_forms(source, expected):
    assert imports(ROOT / "generation" / "probe.py", source) == expected
