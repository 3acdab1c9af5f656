"""The long-lived Python process of a session, run inside the sandbox (source passed with -c).

Protocol: one JSON request per line on the original stdin, {"id": int, "code": str, "name": str}
(the name labels its tracebacks: `File "<turn 3>"`); one JSON
reply per line on the original stdout, {"id", "stdout", "stderr", "value", "error"}. Before any user code
runs, those two descriptors are moved to private numbers and fds 0/1/2 are re-pointed (stdin
to /dev/null, stdout/stderr to unnamed files), so whatever the code prints, from
Python, C or a child process, is captured per turn and cannot garble the protocol.
A turn whose last statement is an expression reports that expression's repr as its value,
like an interactive prompt. The namespace persists from turn to turn.

Nothing a turn starts outlives it: the worker is a child subreaper (orphans of its descendants
become its children, so none escapes by double-forking or starting a new session), and before
it answers a turn it stops, kills and reaps every descendant process.
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import signal
import sys
import tempfile
import traceback
from typing import Any

OUTPUT_LIMIT = 64_000  # characters of stdout/stderr kept per turn
VALUE_LIMIT = 4_000
PR_SET_CHILD_SUBREAPER = 36


def _capture_file(fd: int) -> int:
    """Point `fd` at an unnamed file in the private working directory (memfds are refused in the
    sandbox: their memory would count against no limit; a sandbox's tmpfs files count)."""
    with tempfile.TemporaryFile(dir=".") as f:
        os.dup2(f.fileno(), fd)
    return fd


def _drain(fd: int) -> str:
    size = os.lseek(fd, 0, os.SEEK_END)
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, min(size, 4 * OUTPUT_LIMIT))
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    text = data.decode("utf-8", errors="replace")
    if size > len(data) or len(text) > OUTPUT_LIMIT:
        text = text[:OUTPUT_LIMIT] + f"\n... [output truncated, {size} bytes in all]\n"
    return text


def _split_last_expression(code: str, filename: str) -> tuple[Any, Any]:
    """Compiled (statements, last expression or None) of a turn."""
    tree = ast.parse(code, filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    body = compile(tree, filename, "exec")
    return body, (compile(last, filename, "eval") if last is not None else None)


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<repr() failed: {type(exc).__name__}: {exc}>"
    return text if len(text) <= VALUE_LIMIT else text[:VALUE_LIMIT] + "..."


def _format_error(filename: str) -> str:
    etype, exc, tb = sys.exc_info()
    frames = [f for f in traceback.extract_tb(tb) if f.filename == filename]
    lines = traceback.format_list(frames) + traceback.format_exception_only(etype, exc)
    return ("Traceback (most recent call last):\n" if frames else "") + "".join(lines)


def become_subreaper() -> None:
    """Make orphaned descendants our children (prctl), so `kill_descendants` reaches them all."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def descendants() -> list[int]:
    """Pids of every live process below this one (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(os.getpid(), ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def kill_descendants() -> None:
    """Stop, kill and reap every process the turns started, until none is left."""
    while True:
        pids = descendants()
        if not pids:
            break
        for sig in (signal.SIGSTOP, signal.SIGKILL):  # frozen first, so nothing forks meanwhile
            for pid in pids + descendants():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        for pid in pids:  # reap our children; orphans of the others become ours, found next round
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def run_turn(code: str, namespace: dict[str, Any], name: str) -> dict[str, Any]:
    filename = f"<{name}>"
    value = error = None
    try:
        body, last = _split_last_expression(code, filename)
        exec(body, namespace)
        if last is not None:
            result = eval(last, namespace)
            if result is not None:
                namespace["_"] = result
                value = _short_repr(result)
    except SystemExit as exc:
        error = f"SystemExit: {exc.code}"
    except BaseException:
        error = _format_error(filename)
    return {"value": value, "error": error}


def main() -> None:
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out_fd, err_fd = _capture_file(1), _capture_file(2)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = open(out_fd, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(err_fd, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    become_subreaper()
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    me = os.getpid()
    for line in requests:
        request = json.loads(line)
        reply = run_turn(request["code"], namespace, str(request["name"]))
        if os.getpid() != me:  # a process the turn forked came back here: it must not answer
            os._exit(0)
        kill_descendants()
        reply["id"] = request["id"]
        sys.stdout.flush()
        sys.stderr.flush()
        reply.update(stdout=_drain(out_fd), stderr=_drain(err_fd))
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
