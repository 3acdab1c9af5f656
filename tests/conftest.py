"""Checks that span the whole test run."""

from __future__ import annotations

import gc
import os

import pytest

from execution_helpers import alive, sandbox_processes, wait_for
from training_helpers import corpus_fixture, restore_threads  # noqa: F401 (fixtures of the training tests)


def _left_behind(before: set[int]) -> dict[int, str]:
    """Sandbox processes started since `before` whose host is gone, or that hold an interactive
    job (a session interpreter) of this process: pid -> what it is."""
    left = {}
    for pid, config in sandbox_processes().items():
        host = config.get("host", 0)
        ours = host == os.getpid() and config.get("role") == "interactive"
        if pid not in before and (ours or not alive(host)):
            left[pid] = f"{config.get('role')} sandbox of host pid {host} ({'alive' if alive(host) else 'gone'})"
    return left


@pytest.fixture(scope="session", autouse=True)
def no_sandbox_is_left_behind():
    """Fail the run if a sandbox started during it outlived its host process, or if a session
    interpreter of this process was never closed. (Execution pools of this process, such as
    run_program's shared one, close at exit.)"""
    before = set(sandbox_processes())
    yield
    gc.collect()  # runs the finalizers of unreachable interpreters
    if not wait_for(lambda: not _left_behind(before)):  # a sandbox being killed may take a moment to go
        pytest.fail(f"sandbox processes left behind: {_left_behind(before)}")
