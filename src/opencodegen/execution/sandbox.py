"""Isolated worker processes that run untrusted programs, and the result of one run.

Isolation, strongest available first:

* ``bwrap-root`` (running as root): bubblewrap without a user namespace; the worker keeps only
  the capabilities it needs to drop each job to a uid of its own (so RLIMIT_NPROC applies) and
  to clean up after it.
* ``bwrap-user`` (running as another user): bubblewrap with a user namespace; jobs run as the
  user, process limits apply, and the worker is PID 1 of the namespace so jobs cannot signal it.
* ``none``: plain processes with resource limits and a separate session, only when the user
  opts out explicitly (``isolation="none"``, ``--isolation none`` or ``OPENCODEGEN_ISOLATION=none``),
  with one loud warning that names what is not isolated.

Fail closed: when bubblewrap is missing or its start-up probe fails, nothing runs unless the
user opted out; `resolve_isolation` raises `IsolationUnavailable`, naming the cause and the fix.

Both bubblewrap modes give: no network (own network namespace), a read-only view of only the
system and Python directories, private writable /tmp and /dev/shm wiped after every job, own
pid/ipc/uts namespaces (System V IPC objects are removed after every job), no kernel keyrings
(seccomp), a cleared environment, and a sandbox that dies with its parent. In every mode,
including `none`, nothing a sandbox runs outlives the host process, even when it is SIGKILLed.

Public pieces: `ExecutionResult`, `isolation_report`, and `spawn_interactive`, which starts one
long-lived sandboxed job that talks to the host over pipes (a `SandboxedProcess`).
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import os
import queue
import select
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencodegen.errors import OpenCodeGenError
from opencodegen.execution import _server, seccomp

log = logging.getLogger("opencodegen.execution")

STATUSES = ("passed", "failed", "timeout", "memory", "crashed")
SCRATCH_DIRS = ("/tmp", "/dev/shm")  # private and writable in a sandbox, wiped after every job
SCRATCH_MB = 256  # size of each private tmpfs (/tmp and /dev/shm) of a sandbox
JOB_PROCESSES = 64  # RLIMIT_NPROC of a job (threads count too)
START_TIMEOUT_S = 60.0
KILL_GRACE_S = 5.0  # without a sandbox: time the server has to clean up after SIGTERM
REPLY_GRACE_S = 15.0  # beyond a job's own time limit, before the host gives up on a worker
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "passwd", "group",
             "nsswitch.conf", "hosts", "os-release", "mime.types", "ssl")
JOB_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}
# Only for the server (it removes them before any job starts): bind every symbol of the interpreter
# at start, so that jobs do not each resolve (and copy the pages of) the ones the server never called.
SERVER_ENV = {"LD_BIND_NOW": "1"}
WORKER_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SYS_PTRACE")


class SandboxError(OpenCodeGenError):
    """The sandbox could not be started or stopped answering."""


@dataclass(frozen=True)
class ExecutionResult:
    """How one program run ended.

    status: passed (the code ran to its end), failed (an exception, `sys.exit`, `os._exit`, ...),
    timeout, memory (MemoryError or over the memory limit) or crashed (killed by a signal).
    `error_type`/`error` are the exception's class name and `str()`; `truncated` says the
    output went over the cap.
    """

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    duration: float
    error_type: str | None = None
    error: str | None = None
    truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ----------------------------------------------------------------------------- jobs

JOB_DEFAULTS: dict[str, Any] = {"stdin": "", "timeout": 10.0, "memory_mb": 1024, "output_limit": 1 << 20,
                                "files": None}


def normalize_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Check a job (run_program keyword arguments) and fill in the defaults."""
    unknown = set(job) - set(JOB_DEFAULTS) - {"source"}
    if unknown:
        raise TypeError(f"unknown job fields: {sorted(unknown)}")
    if not isinstance(job.get("source"), str):
        raise TypeError("a job needs `source`, the program text")
    full = {**JOB_DEFAULTS, **job}
    if not isinstance(full["stdin"], str):
        raise TypeError("`stdin` must be a str")
    if not full["timeout"] > 0 or not full["memory_mb"] > 0 or not full["output_limit"] >= 0:
        raise ValueError("timeout and memory_mb must be positive and output_limit non-negative")
    full.update(files=normalize_files(full["files"]), timeout=float(full["timeout"]),
                memory_mb=int(full["memory_mb"]), output_limit=int(full["output_limit"]))
    return full


def normalize_files(files: Mapping[str, str | bytes] | None) -> dict[str, Any]:
    """Check a job's files (relative name -> text or bytes) and encode them for the server."""
    encoded: dict[str, Any] = {}
    for name, content in (files or {}).items():
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise ValueError(f"file name {name!r} must be a relative path inside the job directory")
        if isinstance(content, bytes):
            content = {"hex": content.hex()}
        elif not isinstance(content, str):
            raise TypeError(f"content of {name!r} must be str or bytes")
        encoded[str(Path(*parts))] = content
    return encoded


# ----------------------------------------------------------------------------- isolation plans


@dataclass(frozen=True)
class Isolation:
    """The isolation mode the workers run under and why."""

    mode: str  # bwrap-root | bwrap-user | none
    reason: str = ""

    @property
    def sandboxed(self) -> bool:
        return self.mode != "none"

    @property
    def request(self) -> str:
        """The `isolation` argument that gives exactly this mode again (bwrap or none)."""
        return "bwrap" if self.sandboxed else "none"

    def report(self) -> dict[str, Any]:
        """What is and is not isolated, in words."""
        if self.sandboxed:
            isolated = [
                "network (own network namespace, no interfaces but loopback)",
                "filesystem (read-only system and Python directories only; private /tmp and /dev/shm)",
                "processes (own pid namespace; everything a job starts is killed when it ends)",
                "ipc and hostname (own namespaces)",
                "environment (cleared)",
                "user (jobs run as a uid of their own)" if self.mode == "bwrap-root"
                else "user (jobs run as the invoking user, inside a user namespace)",
                "limits (CPU time, address space, file size, open files, processes, wall clock, total memory)",
            ]
            if seccomp_program() is not None:
                isolated.append("kernel (a seccomp filter refuses keyrings, memfds, io_uring, new user namespaces, "
                                "userfaultfd, perf events, bpf, and changing another process's limits, "
                                "priority or CPUs)")
            return {"mode": self.mode, "isolated": isolated, "not_isolated": [], "reason": self.reason}
        return {
            "mode": self.mode,
            "isolated": ["limits (CPU time, address space, file size, open files, wall clock, total memory)",
                         "processes (jobs stay in the worker's session, which is killed when a job ends or "
                         "the worker goes; a seccomp filter keeps them from signalling or tracing the worker "
                         "or the host, and refuses memfds, System V IPC, io_uring and new user namespaces)",
                         "environment (cleared)"],
            "not_isolated": NOT_ISOLATED,
            "reason": self.reason,
        }


NOT_ISOLATED = [
    "network: programs can open any connection this user can",
    "filesystem: programs can read, write and delete every file this user can",
    "users: programs run as this user (as root, RLIMIT_NPROC does not apply: no fork-bomb limit)",
    "ipc and /dev/shm: shared with the host",
]
ISOLATION_ENV = "OPENCODEGEN_ISOLATION"  # auto | bwrap | none: what `isolation="auto"` means
ISOLATION_CHOICES = ("auto", "bwrap", "none")
OPT_OUT = f"--isolation none or {ISOLATION_ENV}=none (isolation='none' in Python)"


class IsolationUnavailable(SandboxError):
    """Bubblewrap is missing or does not work here and the user did not opt out: nothing runs."""


_plan_lock = threading.Lock()
_plans: dict[str, Isolation | str] = {}  # requested mode -> plan, or why bubblewrap does not work
_warned = False


def requested_isolation(requested: str = "auto") -> str:
    """`bwrap` or `none`: an explicit choice wins; `auto` takes $OPENCODEGEN_ISOLATION, else bwrap."""
    if requested not in ISOLATION_CHOICES:
        raise ValueError(f"isolation must be auto, bwrap or none, not {requested!r}")
    if requested == "auto":
        requested = os.environ.get(ISOLATION_ENV, "").strip().lower() or "auto"
        if requested not in ISOLATION_CHOICES:
            raise SandboxError(f"{ISOLATION_ENV}={os.environ[ISOLATION_ENV]!r} is not a mode: use auto, bwrap "
                               "or none (or unset it)")
    return "none" if requested == "none" else "bwrap"


def resolve_isolation(requested: str = "auto") -> Isolation:
    """The isolation programs run under (probed once per process and cached). Fails closed:
    raises `IsolationUnavailable` when bubblewrap does not work, unless the user opted out."""
    wanted = requested_isolation(requested)
    with _plan_lock:
        if wanted not in _plans:
            _plans[wanted] = _probe(wanted)
        plan = _plans[wanted]
    if isinstance(plan, str):
        raise IsolationUnavailable(_refusal(plan))
    if not plan.sandboxed:
        _warn_once(plan)
    return plan


def _probe(wanted: str) -> Isolation | str:
    """The plan for `wanted` (bwrap | none), or why bubblewrap does not work here."""
    if wanted == "none":
        return Isolation("none", "the user opted out of isolation")
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    plan = Isolation("bwrap-root" if os.geteuid() == 0 else "bwrap-user")
    try:
        with WorkerProcess(plan, 0) as worker:
            result = worker.run(normalize_job({"source": "print(6 * 7)", "timeout": 10}))
    except SandboxError as exc:
        return f"bubblewrap is installed but its start-up probe failed: {exc}"
    if result is not None and result["status"] == "passed" and result["stdout"] == "42\n":
        return plan
    return f"bubblewrap is installed but a test job in it did not pass: {result!r:.500}"


def _refusal(reason: str) -> str:
    """The error of a refused run: the cause, the fix, and the explicit opt-out."""
    fix = ("install it (e.g. `apt install bubblewrap`)" if shutil.which("bwrap") is None
           else "make `bwrap --ro-bind / / --unshare-all true` succeed; without root it needs user namespaces "
           "(sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone on Debian, "
           "kernel.apparmor_restrict_unprivileged_userns on Ubuntu)")
    return (f"untrusted code runs in a sandbox or not at all, and the sandbox cannot start: {reason.rstrip('.')}. "
            f"Fix: {fix}. To run programs WITHOUT isolation (as this user, with network and file access) "
            f"opt out explicitly: {OPT_OUT}.")


def _warn_once(plan: Isolation) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    lines = "\n".join(f"  - NOT ISOLATED {item}" for item in NOT_ISOLATED)
    log.warning(
        "\n%s\nUNTRUSTED CODE RUNS WITHOUT A SANDBOX: %s (%s).\n%s\nOnly resource limits, a separate "
        "session and a cleared environment apply.\n%s",
        "!" * 78, plan.reason, OPT_OUT, lines, "!" * 78,
    )


def isolation_report(requested: str = "auto") -> dict[str, Any]:
    """What the execution workers isolate here: mode, isolated and not isolated parts, reason.
    Never raises for a missing sandbox: the mode is then `unavailable` and `reason` says why."""
    try:
        return resolve_isolation(requested).report()
    except IsolationUnavailable as exc:
        return {"mode": "unavailable", "isolated": [], "not_isolated": [], "reason": str(exc)}


# ----------------------------------------------------------------------------- worker commands


def _job_uid(index: int) -> int:
    """A uid used by no one else: one per worker, so the process limits of workers never meet."""
    uid = 0x4000_0000 + (os.getpid() % (1 << 22)) * 256 + index % 256
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, _, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return uid
    except OSError:
        pass
    return 65534  # nobody: shared by the workers, still not root


@functools.lru_cache(maxsize=1)
def _bwrap_help() -> str:
    try:
        return subprocess.run([shutil.which("bwrap") or "bwrap", "--help"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _interpreter() -> str:
    """The interpreter as a real path: `sys.executable` may hold `..` or a symlink that does not
    exist inside a sandbox, which binds only the real Python directories."""
    return os.path.realpath(sys.executable)


def _python_dirs() -> list[str]:
    """Directories the interpreter and its installed packages live in, outermost only."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(_interpreter()), *site.getsitepackages(),
             site.getusersitepackages(), *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))}
    real = {os.path.realpath(p) for p in paths if p and os.path.isdir(p)}
    real = {p for p in real if p != "/" and not _under(p, SYSTEM_DIRS)}
    return sorted(p for p in real if not any(q != p and _under(p, (q,)) for q in real))


def _python_dirs_in_scratch() -> list[str]:
    """The Python directories under /tmp or /dev/shm (e.g. a virtual environment made in /tmp):
    mounted read-only inside the sandbox's private /tmp and /dev/shm, and kept when they are wiped."""
    return [d for d in _python_dirs() if _under(d, SCRATCH_DIRS)]


def _read_only_binds(paths: list[str]) -> list[str]:
    """bwrap arguments that show `paths` read-only, below plain 0755 parent directories (host
    parents may be private, e.g. /root)."""
    argv: list[str] = []
    parents = sorted({str(p) for d in paths for p in Path(d).parents if str(p) not in ("/", *SCRATCH_DIRS)}, key=len)
    for parent in parents:
        argv += ["--perms", "0755", "--dir", parent]
    for path in paths:
        argv += ["--ro-bind", path, path]
    return argv


def _under(path: str, roots: tuple[str, ...] | set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _bwrap_argv(plan: Isolation) -> list[str]:
    argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session", "--as-pid-1",
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox"]
    if plan.mode == "bwrap-root":
        argv += ["--cap-drop", "ALL"]
        for cap in WORKER_CAPS:
            argv += ["--cap-add", cap]
    else:
        argv += ["--unshare-user"] + (["--disable-userns"] if "--disable-userns" in _bwrap_help() else [])
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for name in ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    python_dirs = _python_dirs()
    in_scratch = [d for d in python_dirs if _under(d, SCRATCH_DIRS)]
    argv += _read_only_binds([d for d in python_dirs if d not in in_scratch])
    size = ["--size", str(SCRATCH_MB << 20)] if "--size" in _bwrap_help() else []  # bubblewrap >= 0.7
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", *size, "--tmpfs", "/tmp",
             "--perms", "1777", *size, "--tmpfs", "/dev/shm"]
    argv += _read_only_binds(in_scratch)  # on top of the private /tmp (kept when it is wiped)
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--clearenv", "--chdir", "/tmp"]
    for key, value in {**JOB_ENV, "HOME": "/tmp", "TMPDIR": "/tmp", **SERVER_ENV}.items():
        argv += ["--setenv", key, value]
    return argv


def seccomp_program() -> bytes | None:
    """The seccomp filter of a whole sandbox (see `seccomp.sandbox_filter`), or None on this machine."""
    return seccomp.sandbox_filter()


def _server_config(plan: Isolation, role: str, index: int, scratch: str | None,
                   preload: tuple[str, ...]) -> dict[str, Any]:
    root_mode = plan.mode == "bwrap-root"
    return {
        "role": role,  # fork-server | interactive
        "host": os.getpid(),
        "own_pid_namespace": plan.sandboxed,
        "job_uid": _job_uid(index) if root_mode else None,
        "nproc": JOB_PROCESSES if plan.sandboxed else None,
        "scratch": list(SCRATCH_DIRS) if plan.sandboxed else [scratch],
        "keep": _python_dirs_in_scratch() if plan.sandboxed else [],
        "job_dir": "/tmp/job" if plan.sandboxed else os.path.join(str(scratch), "job"),
        "env": JOB_ENV,
        "server_env": list(SERVER_ENV),
        "preload": list(preload),
        "path": list(dict.fromkeys(os.path.realpath(p) for p in sys.path if os.path.isabs(p))),
    }


# ----------------------------------------------------------------------------- starting sandboxes

# bubblewrap's --die-with-parent (and the fallback's parent-death signal) follow the THREAD that
# started the process: every sandbox is started from one long-lived thread, so that one made in
# a short-lived thread (a pool thread, a web request) lives as long as the host process.
_launches: queue.SimpleQueue[tuple[dict[str, Any], queue.SimpleQueue[Any]]] = queue.SimpleQueue()
_launcher_lock = threading.Lock()
_launcher: threading.Thread | None = None


def _launcher_loop() -> None:
    while True:
        kwargs, answer = _launches.get()
        try:
            answer.put(subprocess.Popen(**kwargs))
        except BaseException as exc:
            answer.put(exc)


def _launch(**popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(**popen_kwargs)`, run in the launcher thread."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = threading.Thread(target=_launcher_loop, name="opencodegen-sandbox-launcher", daemon=True)
            _launcher.start()
    answer: queue.SimpleQueue[Any] = queue.SimpleQueue()
    _launches.put((popen_kwargs, answer))
    result = answer.get()
    if isinstance(result, BaseException):
        raise result
    return result


def _forget_launcher() -> None:
    """In a forked child the launcher thread does not exist: start a new one when needed."""
    global _launcher, _launches, _launcher_lock
    _launcher, _launches, _launcher_lock = None, queue.SimpleQueue(), threading.Lock()


os.register_at_fork(after_in_child=_forget_launcher)


class SandboxedProcess:
    """A program of `_server` (a fork-server, or the guard of one interactive job) running in a
    sandbox of its own, with pipes to it. Interactive ones come from `spawn_interactive`.

    stdin/stdout: unbuffered binary pipes to the program; pid: its host pid (the bubblewrap
    process when sandboxed); isolation: the `Isolation` it runs under (`.report()` says what is
    isolated); scratch: its private host directory (fallback mode only, else None). Whatever
    happens, no process of the sandbox outlives the host process.
    """

    def __init__(self, isolation: Isolation, role: str, index: int, preload: tuple[str, ...] = ()):
        self.isolation = isolation
        self.scratch = None if isolation.sandboxed else tempfile.mkdtemp(prefix="opencodegen-sandbox-")
        config = _server_config(isolation, role, index, self.scratch, preload)
        argv = [_interpreter(), "-I", "-S", "-B", "-c", _server.BOOTSTRAP, Path(_server.__file__).read_text(),
                json.dumps(config)]
        pass_fds = []
        if isolation.sandboxed:
            argv = _bwrap_argv(isolation) + argv
            bpf = seccomp_program()
            if bpf is not None:
                read_end, write_end = os.pipe()
                os.write(write_end, bpf)
                os.close(write_end)
                pass_fds.append(read_end)
                argv[1:1] = ["--seccomp", str(read_end)]
        self._log = tempfile.TemporaryFile()
        env = None if isolation.sandboxed else {**JOB_ENV, "HOME": self.scratch, "TMPDIR": self.scratch, **SERVER_ENV}
        try:
            self._proc = _launch(
                args=argv, bufsize=0, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
                cwd=self.scratch, start_new_session=not isolation.sandboxed, pass_fds=pass_fds,
            )
        except OSError as exc:
            self._log.close()
            self._remove_scratch()
            raise SandboxError(f"cannot start the sandbox: {exc}") from exc
        finally:
            for fd in pass_fds:
                os.close(fd)
        self.pid = int(self._proc.pid)
        self.stdin: io.RawIOBase = self._proc.stdin  # type: ignore[assignment]
        self.stdout: io.RawIOBase = self._proc.stdout  # type: ignore[assignment]
        if not isolation.sandboxed:  # the jobs' filter names the server, whose pid is known only now
            bpf = seccomp.fallback_filter(self.pid, os.getpid(), os.getpgid(0))
            try:
                _server.write_frame(self.stdin.fileno(), {"filter": bpf.hex() if bpf else None})
            except OSError:
                pass  # it died at once: the first read says so

    @property
    def returncode(self) -> int | None:
        """The exit status once it ended (negative: killed by that signal), else None."""
        return self._proc.poll()

    @property
    def outcome(self) -> str | None:
        """How an interactive job ended: exited | failed (non-zero exit) | crashed | timeout (its
        CPU seconds) | memory | killed (by `kill`, or its sandbox broke); None while it runs."""
        code = self.returncode
        if code is None:
            return None
        index = code - _server.OUTCOME_BASE
        return _server.OUTCOMES[index] if 0 <= index < len(_server.OUTCOMES) else "killed"

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` seconds (None: for ever) for the end; the exit status, or None."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Stop it now, with everything its jobs started, and wait for that."""
        if self._proc.poll() is not None:
            return
        if self.isolation.sandboxed:
            self._proc.kill()  # its program, PID 1 of the sandbox, dies with bubblewrap
        else:
            self._proc.terminate()  # the server kills its jobs' processes, then exits
            if self.wait(KILL_GRACE_S) is None:
                self._proc.kill()
        self._proc.wait()

    def close(self, wait: float = 2.0) -> None:
        """Close the pipes (a polite stop), give it `wait` seconds to end, then `kill` it; release all."""
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self.wait(wait) is None:
            self.kill()
        if not self.isolation.sandboxed:  # what its jobs left if it died first (they cannot leave its session)
            _server.kill_session(self.pid)
        self._log.close()
        self._remove_scratch()

    def log_text(self) -> str:
        """The end of what the sandbox wrote to stderr (start-up errors; an interactive job's stderr)."""
        if self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()[-2000:]

    def _remove_scratch(self) -> None:
        """The server removes its scratch directory itself; this is for one that was SIGKILLed."""
        if self.scratch:
            _server.remove_tree(self.scratch)

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        """The next frame from the server, or None if it died or the deadline passed."""
        fd = self.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            return None
        try:
            return _server.read_frame(fd)
        except (EOFError, OSError, ValueError):
            return None

    def __enter__(self) -> SandboxedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_interactive_uids = itertools.count()


def spawn_interactive(
    source: str,
    *,
    memory_mb: int,
    cpu_seconds: int,
    files: Mapping[str, str | bytes] | None = None,
    isolation: str = "auto",
    preload: Iterable[str] = (),
) -> SandboxedProcess:
    """Start `source` as ONE long-lived sandboxed job whose stdin/stdout are the returned
    process's pipes (its stderr goes to `log_text()`).

    The job gets the set-up of an evaluation job (own session, resource limits, own uid when
    running as root, private working directory holding `files`, cleared environment, seccomp),
    `cpu_seconds` of CPU time over its whole life, and `memory_mb` for all of its processes
    together. When it ends everything it started is killed and `outcome` says how it ended.
    `preload`: modules imported before the job starts (they then import instantly).
    """
    if not isinstance(source, str):
        raise TypeError("`source` must be the program text")
    if not memory_mb > 0 or not cpu_seconds > 0:
        raise ValueError("memory_mb and cpu_seconds must be positive")
    job = {"source": source, "memory_mb": int(memory_mb), "cpu_seconds": int(cpu_seconds),
           "files": normalize_files(files)}
    process = SandboxedProcess(resolve_isolation(isolation), "interactive", 128 + next(_interactive_uids) % 128,
                               tuple(preload))
    try:
        _server.write_frame(process.stdin.fileno(), {"job": job})
        hello = process._receive(time.monotonic() + START_TIMEOUT_S)
    except OSError:
        hello = None
    if not hello or not hello.get("ready"):
        log = process.log_text()
        process.close(wait=0)
        raise SandboxError(f"the interactive sandbox did not start: {log or 'no output'}")
    return process


# ----------------------------------------------------------------------------- one worker


class WorkerProcess:
    """One long-lived fork-server (inside its own sandbox unless the plan is `none`); index picks
    its job uid (0..127: pool workers; interactive jobs use 128..255)."""

    def __init__(self, plan: Isolation, index: int, preload: tuple[str, ...] = ()):
        self._process = SandboxedProcess(plan, "fork-server", index % 128, preload)
        self._to = self._process.stdin.fileno()
        hello = self._process._receive(time.monotonic() + START_TIMEOUT_S)
        if not hello or not hello.get("ready"):
            log = self._process.log_text()
            self.close()
            raise SandboxError(f"the execution worker did not start: {log or 'no output'}")
        self.pid = self._process.pid
        self.retiring = False  # it quits: the jobs without a result need another worker (see `run_batch`)

    def alive(self) -> bool:
        return self._process.returncode is None

    def run_batch(self, jobs: list[dict[str, Any]]) -> Iterator[dict[str, Any] | None]:
        """Results of normalized jobs in order; a None ends it early: the worker died or hung
        on that job and must be replaced. It also ends early, with `retiring` set, when the
        server quits instead of running the next job (its limits, priority, CPUs or memory changed
        since it started) or after a job it could not clean up after: the jobs without a result
        need another worker."""
        try:
            _server.write_frame(self._to, {"jobs": jobs})
        except OSError:
            yield None
            return
        for job in jobs:
            reply = self._process._receive(time.monotonic() + job["timeout"] + REPLY_GRACE_S)
            if reply is not None and reply.pop("retire", False):
                self.retiring = True
                if reply:  # the result of the job it could not clean up after
                    yield reply
                return
            yield reply
            if reply is None:
                return

    def run(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The result of one normalized job (None: see `run_batch`)."""
        return next(self.run_batch([job]))

    def close(self, wait: float = 2.0) -> None:
        """Stop the worker (and with it its sandbox): politely, then by force after `wait` seconds."""
        self._process.close(wait)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
