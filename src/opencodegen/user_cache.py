"""Where opencodegen keeps per-user files it can rebuild: $XDG_CACHE_HOME/opencodegen (default ~/.cache)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opencodegen"
