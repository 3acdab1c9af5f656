"""A persistent Python interpreter in the execution sandbox: code runs turn after turn and the
state (variables, imports, functions) carries over, as in an interactive prompt.

The isolation is the evaluation's own: `opencodegen.execution.sandbox.spawn_interactive` starts
the interpreter worker as one long-lived job with the same bubblewrap sandbox and per-job set-up
(limits, own uid, private directory, cleared environment) and watches its total memory. A turn
that runs past its time limit gets the whole sandbox killed; the interpreter is then dead
(`alive` is False) and a new one must replace it.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencodegen.execution import SandboxError, spawn_interactive
from opencodegen.synthesis import interpreter_worker

TURN_TIMEOUT_S = 30.0
MEMORY_MB = 2048
SESSION_CPU_S = 3600  # CPU seconds the interpreter may use over its whole life
REPLY_LIMIT = 1 << 20
READY_TIMEOUT_S = 60.0  # for the worker's first line, once its sandbox started
END_WAIT_S = 2.0  # after its output closed, how long the sandbox may take to say how it ended
PRELOAD = ("numpy",)  # imported before the job starts, so the prefix's `import numpy` is instant


@dataclass
class TurnOutput:
    """What running one turn produced. status: ok | error | timeout | memory | crashed | pending."""

    status: str = "pending"
    stdout: str = ""
    stderr: str = ""
    value: str | None = None  # repr of a final expression, as an interactive prompt shows it
    error: str | None = None  # traceback of an exception, or why the interpreter died
    duration: float = 0.0


class Interpreter:
    """One sandboxed interpreter process; `run(code)` executes a turn in its namespace.

    `process` is the `SandboxedProcess` it runs in (`process.isolation.mode` says how isolated).
    """

    def __init__(self, timeout: float = TURN_TIMEOUT_S, memory_mb: int = MEMORY_MB, isolation: str = "auto"):
        self.timeout = timeout
        source = Path(interpreter_worker.__file__).read_text(encoding="utf-8")
        self.process = spawn_interactive(source, memory_mb=memory_mb, cpu_seconds=SESSION_CPU_S,
                                         isolation=isolation, preload=PRELOAD)
        self._buffer = b""
        self._requests = itertools.count(1)
        self.alive = True
        hello = self._reply(time.monotonic() + READY_TIMEOUT_S)
        if not hello.get("ready"):
            log = self.process.log_text()
            self.close()
            raise SandboxError(f"the session interpreter did not start: {log or hello}")

    def run(self, code: str, timeout: float | None = None, name: str = "input") -> TurnOutput:
        """Execute one turn; after a timeout, memory kill or crash the interpreter is dead.
        `name` labels the code in tracebacks (`File "<turn 3>"`)."""
        if not self.alive:
            return TurnOutput("crashed", error="the interpreter is not running")
        started = time.monotonic()
        request = next(self._requests)
        try:
            os.write(self.process.stdin.fileno(), (json.dumps({"id": request, "code": code, "name": name}) + "\n").encode())
        except OSError:
            reply: dict[str, Any] = {"died": "crashed"}
        else:
            deadline = started + (timeout or self.timeout)
            reply = self._reply(deadline)
            while reply.get("id", request) != request:  # a stale answer (e.g. from a forked process)
                reply = self._reply(deadline)
        duration = time.monotonic() - started
        if "died" in reply or "timeout" in reply:
            self.close()
            status = "timeout" if "timeout" in reply else ("memory" if reply["died"] == "memory" else "crashed")
            why = {"timeout": f"the turn ran past {timeout or self.timeout:g} s and the interpreter was stopped",
                   "memory": "the turn went over the memory limit and the interpreter was stopped",
                   "crashed": "the interpreter died (its state is lost)"}[status]
            return TurnOutput(status, error=why, duration=duration)
        error = reply.get("error")
        return TurnOutput(
            status="error" if error else "ok",
            stdout=str(reply.get("stdout", "")),
            stderr=str(reply.get("stderr", "")),
            value=None if reply.get("value") is None else str(reply["value"]),
            error=None if error is None else str(error),
            duration=duration,
        )

    def _reply(self, deadline: float) -> dict[str, Any]:
        """The next JSON line from the sandbox, {"timeout": True}, or {"died": ...} on EOF/garbage."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return {"timeout": True}
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # the worker is gone: the sandbox says why
                self.process.wait(END_WAIT_S)
                return {"died": self.process.outcome or "crashed"}
            if len(self._buffer) > REPLY_LIMIT:
                return {"died": "crashed"}
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            return {"died": "crashed"}
        return reply if isinstance(reply, dict) else {"died": "crashed"}

    def close(self) -> None:
        """Stop the interpreter and tear its sandbox down (nothing it started survives)."""
        self.process.close(wait=0)
        self.alive = False

    def __enter__(self) -> Interpreter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "alive", False):
            try:
                self.close()
            except Exception:  # at interpreter shutdown; bwrap --die-with-parent still cleans up
                pass
