"""SIGTERM as an exception: a run stopped by torchrun or a scheduler unwinds through the
trainer's cleanup (metrics closed, process group released) instead of dying mid-write."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_STATUS = 128 + signal.SIGTERM  # the shell's status for a process ended by SIGTERM


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (a BaseException, like KeyboardInterrupt, so that
    `except Exception` handlers on the way do not swallow it)."""


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Within the block, the first SIGTERM raises `Terminated`; a second one ends the process
    at once (the default action), so a cleanup that hangs can still be stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_through_checkpoint_io() -> Iterator[None]:
    """torch.distributed.checkpoint hands what a rank raised back wrapped in a CheckpointException:
    a SIGTERM that landed inside a sharded save or load leaves the block as the `Terminated` it was."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as exc:
        stop = next((e for e, _ in exc.failures.values() if isinstance(e, Terminated)), None)
        if stop is None:
            raise
        raise stop from exc
