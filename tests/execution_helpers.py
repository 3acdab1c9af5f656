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


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{task}/children") as f:
                children = [int(x) for x in f.read().split()]
            found += children
            todo += children
    return found


def sandbox_trees(worker_pids: list[int]) -> dict[int, dict]:
    """Per worker process (a sandbox's bubblewrap): the processes below it, whether the first is
    the fork-server, and that server's peak resident memory in kB."""
    trees = {}
    for pid in worker_pids:
        below = descendants(pid)
        server, peak = False, 0
        if below:
            with open(f"/proc/{below[0]}/cmdline", "rb") as f:
                server = b"<sandbox-server>" in f.read()
            with open(f"/proc/{below[0]}/status") as f:
                peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        trees[pid] = {"processes": below, "server": server, "peak_kb": peak}
    return trees
