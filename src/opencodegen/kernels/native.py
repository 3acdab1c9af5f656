"""A C kernel of this package: compiled on first use with the system C compiler, loaded with ctypes.

The source ships with the package. The first use compiles it ($CC, else cc) into
~/.cache/opencodegen/kernels, under a name made from the source, the headers beside it, the
flags and the compiler (a cached library that does not load is rebuilt). Where it cannot run —
not Linux on x86-64, a CPU without the instructions it needs, no compiler, or
OPENCODEGEN_CPU_KERNEL=0 — it is "off", the reason is logged once (quietly when expected, as a
warning when a build failed) and `status()` tells it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opencodegen.io import atomic_path
from opencodegen.user_cache import user_cache_dir

SWITCH = "OPENCODEGEN_CPU_KERNEL"  # "0" turns every native kernel off
COMPILE_TIMEOUT_S = 120


def cache_dir() -> Path:
    return user_cache_dir() / "kernels"


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


class NativeLibrary:
    """One C source, its build into the user cache, and its functions once loaded.

    `cpu_needs`: /proc/cpuinfo flags the code uses; `bind(library)` declares the ctypes
    signatures and returns what callers use; `consequence` says what users lose without it.
    """

    def __init__(self, source: Path, flags: tuple[str, ...], cpu_needs: tuple[str, ...],
                 bind: Callable[[ctypes.CDLL], Any], log: logging.Logger, consequence: str) -> None:
        self.source, self.flags, self.cpu_needs = source, flags, cpu_needs
        self._bind, self._log, self._consequence = bind, log, consequence
        self._lock = threading.Lock()
        self._result: tuple[Any, str | None] | None = None  # (functions or None, why not); None: not tried

    def unavailable_reason(self) -> str | None:
        """Why the kernel cannot be used on this machine, or None (compilation may still fail)."""
        if os.environ.get(SWITCH, "1") == "0":
            return f"turned off ({SWITCH}=0)"
        if platform.system() != "Linux" or platform.machine() != "x86_64":
            return f"built for Linux on x86-64 only (this is {platform.system()} on {platform.machine()})"
        missing = [flag for flag in self.cpu_needs if flag not in cpu_flags()]
        if missing:
            return f"the CPU lacks {', '.join(missing)}"
        if compiler() is None:
            return "no C compiler found (install gcc or set CC)"
        return None

    def build(self, force: bool = False) -> Path:
        """Compile the source into the cache unless it is there already; return the library's path."""
        cc = compiler()
        if cc is None:
            raise RuntimeError("no C compiler found (install gcc or set CC)")
        headers = b"".join(path.read_bytes() for path in sorted(self.source.parent.glob("*.h")))  # #included
        key = hashlib.sha256(self.source.read_bytes() + headers + repr((self.flags, cc)).encode()).hexdigest()[:16]
        target = cache_dir() / f"{self.source.stem}-{key}.so"
        if target.is_file() and not force:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as partial:  # concurrent builders leave one complete file
            done = subprocess.run([cc, *self.flags, str(self.source), "-o", str(partial)], capture_output=True,
                                  text=True, timeout=COMPILE_TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"{cc} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return target

    def functions(self) -> Any:
        """What `bind` made of the loaded library, or None where the kernel is unavailable."""
        if self._result is None:  # (read without the lock once set: this runs on every call)
            with self._lock:
                if self._result is None:
                    self._result = self._load()
        return self._result[0]

    def status(self) -> str:
        """Either "on" or "off: <reason>" (loads the kernel if that was not tried yet)."""
        self.functions()
        assert self._result is not None
        return "on" if self._result[0] is not None else f"off: {self._result[1]}"

    def _load(self) -> tuple[Any, str | None]:
        reason = self.unavailable_reason()
        if reason is not None:  # expected on such a machine: say it quietly
            self._log.info("%s not used: %s", self.source.stem, reason)
            return None, reason
        try:
            try:
                library = ctypes.CDLL(str(self.build()))
            except OSError:  # a damaged cached file: rebuild it once
                library = ctypes.CDLL(str(self.build(force=True)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # unexpected: say it loudly
            reason = f"could not be built: {exc}"
            self._log.warning("%s not used (%s): %s", self.source.stem, self._consequence, reason)
            return None, reason
        return self._bind(library), None
