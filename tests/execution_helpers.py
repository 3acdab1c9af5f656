"""Finding the live processes of opencodegen sandboxes in /proc, for the leak checks."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from opencodegen.execution._server import BOOTSTRAP

MARKER = BOOTSTRAP.encode()  # in the command line of a sandbox's bubblewrap, server or guard, and forked jobs


def _command_lines() -> dict[int, list[bytes]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found[int(entry)] = f.read().rstrip(b"\0").split(b"\0")
            except OSError:
                pass  # gone, or a kernel thread
    return found


def sandbox_processes() -> dict[int, dict]:
    """Live sandbox processes: pid -> the sandbox's config from its command line (role, host pid, ...)."""
    found = {}
    for pid, argv in _command_lines().items():
        if MARKER in argv:
            try:
                found[pid] = json.loads(argv[-1])
            except ValueError:
                continue
    return found


def processes_with(marker: str) -> list[int]:
    """Pids of the processes whose command line contains `marker`."""
    return [pid for pid, argv in _command_lines().items() if any(marker.encode() in arg for arg in argv)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def wait_for(condition: Callable[[], object], seconds: float = 5.0) -> bool:
    """Whether `condition()` became true within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(condition())
