"""Optional dependencies (pyproject extras): a missing one is one clear error naming the extra."""

from __future__ import annotations

import importlib.util

from opencodegen.errors import OpenCodeGenError


class MissingExtra(OpenCodeGenError):
    """A command needs an optional dependency that is not installed."""


def require(module: str, extra: str, purpose: str) -> None:
    """Refuse `purpose` unless `module` can be imported; the fix is `pip install 'opencodegen[extra]'`."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(
            f"{purpose} needs the {module!r} package, which is not installed: "
            f"pip install 'opencodegen[{extra}]' (or pip install {module})"
        )
