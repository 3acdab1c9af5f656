"""The programs that run inside a sandbox: a fork-server that runs untrusted programs, one
forked child per job, and the guard of one long-lived interactive job.

This file runs inside the sandbox (see `BOOTSTRAP`: its source and a JSON config are the
arguments; the config's "role" picks `serve` or `guard`); it uses only the standard library and
is also imported by the host for the frame helpers.

Protocol on the inherited stdin/stdout pipes: frames of a 4-byte big-endian length followed by
UTF-8 JSON. The fork-server first sends {"ready": ...}; then for each {"jobs": [...]} it receives
it sends one result frame per job, in order. The guard receives one {"job": ...} frame, sends
{"ready": ...} and hands both pipes to the job; it exits with `OUTCOME_BASE` + the index in
`OUTCOMES` of how the job ended.

Per job the server forks a child that starts a new session, takes the resource limits, drops to
the job uid (when the server runs as root), moves into a fresh private directory and executes
the source in a fresh `__main__`. The server enforces the wall-clock limit, caps the captured
output, watches the memory of all of the job's processes, and afterwards kills every process the
job left and wipes every writable directory, so nothing of one job reaches the next.

Lifetime: in a sandbox this process is PID 1 of its pid namespace and bubblewrap kills it when
the host dies (taking the namespace along). Without a sandbox it is a child subreaper that gets
SIGHUP when the host dies and SIGTERM when the host stops it: either way it kills every process
of its job, removes its scratch directory (as it does on any way out) and exits. A job child
also dies with it (SIGKILL): by its parent-death signal, or in a sandbox with the pid namespace.

A program passes when its code ran to the end: the child then writes ONE report to the status
channel, signed with a random key the server made for this job (a keyed BLAKE2 digest of the
report). The key exists only in the memory of the server and of the child, never on a
descriptor, in a pipe, in /proc or in the environment, so blind writes, `sys.exit`, `os._exit`,
closed descriptors, printed text or a report read off the channel cannot make a passing one,
and any other bytes on the status channel fail the job. A program written against this harness's
internals could find the key in its own interpreter's objects (as it could fool any checker
that runs in the same interpreter); see docs/evaluation.md.
"""

from __future__ import annotations

import _signal
import builtins
import ctypes
import gc
import itertools
import json
import linecache
import os
import resource
import select
import signal
import socket
import stat
import struct
import sys
import time
import traceback
import types
from _blake2 import blake2b  # keyed: a MAC (hashlib would load OpenSSL into every forked job)
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
STATUS_FD = 3  # the child's end of the status channel
KEY_BYTES = TAG_BYTES = 16  # the random key of a job; the digest that signs its report
REPORT_CODES = {b"P": "passed", b"F": "failed", b"M": "memory"}  # a report's first byte
ERROR_TYPE_LIMIT = 256  # characters of an exception's class name in a report (its message: output_limit)
SERVER_GROWTH_MB = 256  # a fork-server whose own memory grew by more is replaced
SETUP_FAILED = 125  # exit code of a child whose sandbox set-up failed (never the program's fault)
MEMORY_POLL_S = 0.05  # a job's memory check interval (fork-server jobs are short)
GUARD_POLL_S = 0.1  # the same for an interactive job (mostly idle, waiting for its host)
OUTCOMES = ("exited", "failed", "crashed", "timeout", "memory")  # how an interactive job ended
OUTCOME_BASE = 100  # the guard's exit code is OUTCOME_BASE + OUTCOMES.index(outcome)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
FILE_SIZE_LIMIT = 64 << 20
OPEN_FILES_LIMIT = 256
GC_EVERY_BATCHES = 256  # the fork-server's own garbage collection runs this seldom (see serve)
PRECOMPILE_MAX_CHARS = 1 << 16  # sources up to this size are compiled by the server, before the fork
BOOTSTRAP = "import sys; exec(compile(sys.argv.pop(1), '<sandbox-server>', 'exec'))"


# ----------------------------------------------------------------------------- framing


def write_frame(fd: int, message: dict[str, Any]) -> None:
    """Send one length-prefixed JSON frame."""
    data = json.dumps(message).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def read_exact(fd: int, size: int) -> bytes:
    """Read exactly `size` bytes; raise EOFError when the pipe closes first."""
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> dict[str, Any]:
    """Receive one length-prefixed JSON frame."""
    (size,) = struct.unpack(">I", read_exact(fd, 4))
    return json.loads(read_exact(fd, size))


# ----------------------------------------------------------------------------- the child


_libc = ctypes.CDLL(None, use_errno=True)  # looked up once: a forked child should touch little memory


def _prctl(option: int, value: int) -> None:
    _libc.prctl(option, value, 0, 0, 0)


def job_limits(cpu_seconds: int, memory_mb: int, nproc: int | None) -> list[tuple[int, tuple[int, int]]]:
    """The resource limits of a job (made in the server; the child only applies them)."""
    cpu, memory = int(cpu_seconds), int(memory_mb) << 20
    limits = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT)),
        (resource.RLIMIT_NOFILE, (OPEN_FILES_LIMIT, OPEN_FILES_LIMIT)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_MSGQUEUE, (0, 0)),  # POSIX message queues would outlive the job
    ]
    if nproc is not None:
        limits.append((resource.RLIMIT_NPROC, (nproc, nproc)))
    return limits


def _place_files(directory: str, files: dict[str, Any]) -> None:
    os.mkdir(directory, 0o700)
    for name, content in files.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        data = bytes.fromhex(content["hex"]) if isinstance(content, dict) else content.encode()
        with open(path, "wb") as f:
            f.write(data)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_loader(program: bytes) -> Any:
    """The argument PR_SET_SECCOMP takes for `program` (it keeps `program` alive)."""
    prog = _SockFprog(len(program) // 8, program)
    prog.program = program
    return prog


def _load_seccomp(prog: Any) -> None:
    """Load a seccomp filter into this process for good (without a sandbox, in a job's child)."""
    ulong = ctypes.c_ulong
    if (_libc.prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0
            or _libc.prctl(PR_SET_SECCOMP, ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog), ulong(0), ulong(0)) != 0):
        raise OSError(ctypes.get_errno(), "cannot load the seccomp filter")


def _child(job: dict[str, Any], limits: list, config: dict[str, Any], fds: tuple[int, ...], key: bytes | None) -> None:
    """Set the child up and run the program; never returns (a program cannot make it).

    Kept lean: every object a forked child touches costs it a copy-on-write page fault. The
    server's environment and its (empty, unused) sys.stdin/stdout/stderr objects are already what
    a job needs: only the descriptors under them change. `fds` become 0, 1, 2 and STATUS_FD; with
    a `key` (a fork-server job) the child reports to STATUS_FD once the program has finished.
    """
    write, exit_now, getpid, mac = os.write, os._exit, os.getpid, blake2b  # before the program can patch them
    code = SETUP_FAILED
    try:
        gc.enable()  # off in the fork-server (see serve)
        main = _set_up_child(job, limits, config, fds)
        me, code = getpid(), 0
        status, body, error = b"P", b"", None
        try:
            exec(job.get("code") or compile(job["source"], "<string>", "exec", dont_inherit=True), main.__dict__)
        except BaseException as exc:  # SystemExit too: a program that stops early did not pass
            status = b"M" if issubclass(type(exc), MemoryError) else b"F"
            code, body, error = _exit_code(exc), _describe(exc, job.get("output_limit", 0)), exc
        if key is not None and getpid() == me:  # a fork of the program never reports
            _write_all(write, b"".join((status, mac(status + body, key=key, digest_size=TAG_BYTES).digest(), body)))
        if error is not None:
            _print_traceback(error, job["source"])
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
    finally:
        exit_now(code)


def _set_up_child(job: dict[str, Any], limits: list, config: dict[str, Any], fds: tuple[int, ...]) -> types.ModuleType:
    """Everything a job's child does before the program starts; returns its fresh `__main__`."""
    own_ns = config["own_pid_namespace"]
    try:
        if own_ns:
            os.setsid()
        else:  # in a pid namespace the kernel kills everything when the server (PID 1) dies
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the server (cleared by a uid drop)
            if os.getppid() != config["pid"]:  # the server died before that
                os._exit(SETUP_FAILED)
            os.setpgid(0, 0)  # its own group, in the server's session: the host can find all of it there
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(len(fds), config["max_fd"])
        _signal.signal(signal.SIGINT, signal.default_int_handler)  # the signals the server changed
        if not own_ns:  # see _die_with_host
            _signal.signal(signal.SIGTERM, _signal.SIG_DFL)
            _signal.signal(signal.SIGHUP, _signal.SIG_DFL)
        for which, value in limits:
            resource.setrlimit(which, value)
        uid = config["job_uid"]
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        else:  # the server's own uid: let it read the job's memory use (the server stays closed)
            _prctl(PR_SET_DUMPABLE, 1)
        os.umask(0o077)
        directory = config["job_dir"]
        _place_files(directory, job["files"])
        os.chdir(directory)
        if config.get("job_filter") is not None:
            _load_seccomp(config["job_filter"])
        sys.path.insert(0, directory)
        sys.argv = ["-c"]
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main
        return main
    except BaseException:
        traceback.print_exc()
        os._exit(SETUP_FAILED)


def _exit_code(exc: BaseException) -> int:
    """The exit status of a program that raised `exc` (SystemExit's code when it is an int)."""
    try:
        if isinstance(exc, SystemExit) and type(exc.code) is int:
            return exc.code & 0xFF
    except BaseException:
        pass
    return 1


def _describe(exc: BaseException, limit: int) -> bytes:
    """The report body of an exception: its class name, NUL, its message (at most `limit` bytes).

    The program's own code may run here (a __str__) but never sees the key; anything that is not
    a plain str becomes a placeholder, so no method of the program's can touch the report.
    """
    try:
        name, text = type(exc).__name__, str(exc)
    except BaseException:
        return b"UnprintableException\0"
    if type(name) is not str or type(text) is not str:
        return b"UnprintableException\0"
    return b"".join((name[:ERROR_TYPE_LIMIT].encode("utf-8", "backslashreplace")[:ERROR_TYPE_LIMIT], b"\0",
                     text[:limit].encode("utf-8", "backslashreplace")[:limit]))


def _write_all(write: Any, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[write(STATUS_FD, view) :]
    except BaseException:
        pass  # the program closed or replaced the descriptor: no report, no pass


def _print_traceback(exc: BaseException, source: str) -> None:
    """The program's frames only, to its stderr (which the program may have broken)."""
    try:
        linecache.cache["<string>"] = (len(source), None, source.splitlines(True), "<string>")
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
    except BaseException:
        pass


# ----------------------------------------------------------------------------- cleanup


HAVE_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")  # CONFIG_PROC_CHILDREN


def _children_of(pid: int) -> list[int]:
    """Child pids from /proc/<pid>/task/*/children (none when the process is gone)."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(x) for x in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def _children_map() -> dict[int, list[int]]:
    """Child pids of every process, from one scan of /proc (for kernels without children files)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    return children


def job_processes(own_pid_namespace: bool) -> list[int]:
    """Every process the current job may have left: the whole pid namespace but us, or our descendants."""
    if own_pid_namespace:
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and p != "1"]
    if HAVE_CHILDREN_FILES:
        children_of = _children_of
    else:
        children_of = _children_map().get
    seen: set[int] = set()
    todo = list(children_of(os.getpid()) or ())
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children_of(pid) or ())
    return sorted(seen)


def over_memory(pids: list[int], limit: int, config: dict[str, Any] | None = None) -> bool:
    """Whether the processes use more than `limit` bytes of memory (with a sandbox's `config`:
    together with what the job holds outside them, `held_outside_processes`).

    Cheap first: the sum of resident sizes (/proc/<pid>/statm, O(1) per process) bounds the
    proportional set size from above; only when it is over the limit are the page tables walked
    for the exact proportional set size (`resident_bytes`), so forked copies sharing pages are
    not counted twice.
    """
    if config is not None:
        limit -= held_outside_processes(config)
    resident = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                resident += int(f.read().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            pass  # gone already
    return resident > limit and resident_bytes(pids) > limit


def resident_bytes(pids: list[int]) -> int:
    """Memory of the processes: their proportional set size (shared pages split among sharers)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) << 10
        except (OSError, StopIteration, ValueError):
            pass  # gone already
    return total


def kill_everything(own_pid_namespace: bool) -> dict[int, int]:
    """Kill every process of the job and reap them all (we are PID 1 or a child subreaper).

    Returns the wait status of each reaped process by pid.
    """
    reaped: dict[int, int] = {}
    while True:
        if own_pid_namespace:
            if os.getpid() != 1:  # kill(-1) outside our own namespace would hit the whole host
                raise RuntimeError("kill(-1) refused: not PID 1 of a private pid namespace")
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            pids = job_processes(False)
            for sig in (signal.SIGSTOP, signal.SIGKILL):  # freeze first so nothing forks meanwhile
                for pid in pids + job_processes(False):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            return reaped
        reaped[pid] = wait_status


IPC_RMID, SHM_INFO = 0, 14
IPC_INFO_CALLS = (("shmctl", SHM_INFO, 0), ("msgctl", 12, 0), ("semctl", 19, 7))  # SHM/MSG/SEM_INFO
SYSV_IPC = {"shm": "shmctl", "msg": "msgctl", "sem": "semctl"}  # /proc/sysvipc file -> libc call
_ipc_info = (ctypes.c_int * 64)()


class _ShmInfo(ctypes.Structure):  # struct shm_info, what shmctl(SHM_INFO) fills in
    _fields_ = [("used_ids", ctypes.c_int), ("shm_tot", ctypes.c_ulong), ("shm_rss", ctypes.c_ulong),
                ("shm_swp", ctypes.c_ulong), ("swap_attempts", ctypes.c_ulong), ("swap_successes", ctypes.c_ulong)]


_shm_info = _ShmInfo()
_shm_info_ref = ctypes.byref(_shm_info)


def _sysv_ipc_in_use() -> bool:
    """Whether any System V IPC object exists (one cheap syscall per kind: its *_INFO count)."""
    for call, info, count_field in IPC_INFO_CALLS:
        args = (0, 0, info, _ipc_info) if call == "semctl" else (0, info, _ipc_info)
        if getattr(_libc, call)(*args) >= 0 and _ipc_info[count_field] > 0:
            return True
    return False


def _sysv_ipc_ids() -> dict[str, list[int]]:
    found = {}
    for kind in SYSV_IPC:
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                ids = [int(line.split()[1]) for line in f.readlines()[1:] if line.strip()]
        except OSError:
            ids = []
        if ids:
            found[kind] = ids
    return found


def remove_sysv_ipc(job_uid: int | None) -> None:
    """Remove the System V IPC objects a job left (they outlive processes), as their owner."""
    if not _sysv_ipc_in_use():
        return
    found = _sysv_ipc_ids()
    pid = os.fork()
    if pid == 0:
        try:
            if job_uid is not None:
                os.setgroups([])
                os.setgid(job_uid)
                os.setuid(job_uid)
            for kind, ids in found.items():
                for ipc_id in ids:
                    if kind == "sem":
                        _libc.semctl(ipc_id, 0, IPC_RMID)
                    else:
                        getattr(_libc, SYSV_IPC[kind])(ipc_id, IPC_RMID, None)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _die_with_host(config: dict[str, Any]) -> None:
    """Without a sandbox: on SIGTERM (the host's `kill`) or SIGHUP (sent by the kernel when the
    host dies) kill every process of the job, remove the scratch directory and exit."""

    def stop(signum: int, frame: Any) -> None:
        kill_everything(False)
        remove_scratch(config)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    _prctl(PR_SET_PDEATHSIG, signal.SIGHUP)
    if os.getppid() != config["host"]:  # the host died before that
        stop(signal.SIGHUP, None)


def remove_scratch(config: dict[str, Any]) -> None:
    """Without a sandbox: remove the private host directory on the way out, whatever the way
    (the host may be gone already). A sandbox's directories vanish with it."""
    if not config["own_pid_namespace"]:
        try:
            remove_tree(config["scratch"][0])
        except OSError:
            pass  # nothing to tell: the host is gone or removes it itself


def clean_up(config: dict[str, Any]) -> None:
    """Undo whatever the last job changed: its files, directory modes, System V IPC objects (in a
    sandbox's own IPC namespace; without one, jobs cannot make any and the host's are not ours)."""
    for directory, mode in config["scratch_modes"].items():
        os.chmod(directory, mode)
        wipe(directory, config["keep"])
    if config["own_pid_namespace"]:
        remove_sysv_ipc(config["job_uid"])


def held_outside_processes(config: dict[str, Any]) -> int:
    """Bytes a job holds that no process's memory shows: in a sandbox, the files in its private
    tmpfs mounts (/tmp, /dev/shm) and its System V shared memory (the sandbox's own namespace)."""
    if not config["own_pid_namespace"]:
        return 0
    held = 0
    for directory in config["scratch"]:
        usage = os.statvfs(directory)
        held += (usage.f_blocks - usage.f_bfree) * usage.f_frsize
    if _libc.shmctl(0, SHM_INFO, _shm_info_ref) >= 0:
        held += (_shm_info.shm_rss + _shm_info.shm_swp) * PAGE_SIZE
    return held


def kill_session(session: int) -> list[int]:
    """Without a sandbox, from the host: kill every process of `session` (the fork-server's, which
    its jobs cannot leave), e.g. what a job left when its server died; the pids it killed."""
    killed: list[int] = []
    for _ in range(100):
        members = [pid for pid, sid in _sessions().items() if sid == session and pid != os.getpid()]
        if not members:
            return killed
        for sig in (signal.SIGSTOP, signal.SIGKILL):  # freeze first so nothing forks meanwhile
            for pid in members:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        killed += members
        time.sleep(0.01)
    return killed


def _sessions() -> dict[int, int]:
    """The session of every live process (zombies left out: they are dead already)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != b"Z":
                found[int(entry)] = int(fields[3])
    return found


def remove_tree(directory: str) -> None:
    """Remove `directory` and everything in it (even what a program made unreadable), if it is there."""
    try:
        os.chmod(directory, stat.S_IRWXU)
        wipe(directory)
        os.rmdir(directory)
    except FileNotFoundError:
        pass


def wipe(directory: str, keep: tuple[str, ...] | list[str] = ()) -> None:
    """Remove everything inside `directory`, even directories a program made unreadable, except the
    (read-only mounted) directories in `keep` and the 0755 directories that lead to them."""
    for entry in list(os.scandir(directory)):
        if entry.path in keep:
            continue
        if any(k.startswith(entry.path + "/") for k in keep):  # on the way to a kept directory
            os.chmod(entry.path, 0o755)
            wipe(entry.path, keep)
        elif entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, stat.S_IRWXU)
            wipe(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


# ----------------------------------------------------------------------------- one job


class _Output:
    """Captured bytes of one stream, capped at `limit`; the rest is read and dropped."""

    def __init__(self, limit: int):
        self.limit, self.data, self.truncated = limit, bytearray(), False

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.truncated = True
        self.data += chunk[: max(room, 0)]

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def run_job(job: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a forked child and report how it went."""
    own_ns = config["own_pid_namespace"]
    (stdin_r, stdin_w), (err_r, err_w) = os.pipe(), os.pipe()  # stderr carries nothing a verdict reads
    (out_r, out_w), (status_r, status_w) = _one_way_channel(), _one_way_channel()
    key = os.urandom(KEY_BYTES)  # only in this process's memory, and the child's (see _child)
    limits = job_limits(int(job["timeout"]) + 2, job["memory_mb"], config["nproc"])
    job["code"] = _precompile(job["source"])
    pid = os.fork()
    if pid == 0:
        _child(job, limits, config, (stdin_r, out_w, err_w, status_w), key)
    for fd in (stdin_r, out_w, err_w, status_w):
        os.close(fd)
    stdout, stderr = _Output(job["output_limit"]), _Output(job["output_limit"])
    status = _Output(1 + TAG_BYTES + ERROR_TYPE_LIMIT + 1 + job["output_limit"])  # the longest report
    sinks = {out_r: stdout, err_r: stderr, status_r: status}
    try:
        verdict, duration = _watch(pid, job, config, sinks, stdin_w)
        if verdict is None and held_outside_processes(config) > job["memory_mb"] << 20:
            verdict = "memory"  # what it left in its tmpfs mounts (memfds are refused)
        wait_status = kill_everything(own_ns).get(pid, -1)  # -1: never reaped (cannot happen)
        for fd, sink in sinks.items():
            _drain(fd, sink)
    finally:
        for fd in sinks:
            os.close(fd)
    return _verdict(verdict, wait_status, _read_report(bytes(status.data), key), stdout, stderr, duration)


def _one_way_channel() -> tuple[int, int]:
    """(read end, write end) of a channel from a job to the server that a verdict is read from
    (the report; stdout, where MTPB's harness reports): a socket pair, not a pipe, because a
    pipe's write end re-opened through /proc/self/fd reads what the job's other writers (the
    harness) write; a socket cannot be re-opened, and reading the job's end only ever yields what
    the server sends, which is nothing."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.shutdown(socket.SHUT_WR)
    return ours.detach(), theirs.detach()


def _read_report(data: bytes, key: bytes) -> tuple[str, str | None, str | None] | None:
    """(status, error type, message) from the status channel; None when nothing came. Anything but
    exactly one report signed with `key` (the program wrote to the channel) fails the job."""
    if not data:
        return None
    code, tag, body = data[:1], data[1 : 1 + TAG_BYTES], data[1 + TAG_BYTES :]
    if code not in REPORT_CODES or tag != blake2b(code + body, key=key, digest_size=TAG_BYTES).digest():
        return "failed", "TamperedReport", "the program wrote to the sandbox's report channel"
    if REPORT_CODES[code] == "passed":
        return "passed", None, None
    error_type, _, error = body.decode("utf-8", "replace").partition("\0")
    return REPORT_CODES[code], error_type, error


def _precompile(source: str) -> types.CodeType | None:
    """The program's code object, or None for the child to compile it (and report its error).

    Compiling here, where the parser's memory is warm, saves each forked child the page faults of
    compiling. Large sources are left to the child and its limits.
    """
    if len(source) > PRECOMPILE_MAX_CHARS:
        return None
    try:
        return compile(source, "<string>", "exec", dont_inherit=True)
    except BaseException:  # SyntaxError, RecursionError, MemoryError: the child raises it again
        return None


def _watch(
    pid: int, job: dict[str, Any], config: dict[str, Any], sinks: dict[int, _Output], stdin_w: int
) -> tuple[str | None, float]:
    """Feed stdin and collect output until the child exits or a limit is hit.

    Returns the verdict forced by a limit (None when the child exited by itself) and the time.
    """
    started = time.monotonic()
    deadline, next_memory_check = started + job["timeout"], started + MEMORY_POLL_S
    pending = memoryview(job["stdin"].encode())
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (*sinks, pidfd):
        poller.register(fd, select.POLLIN)
    if pending:
        os.set_blocking(stdin_w, False)
        poller.register(stdin_w, select.POLLOUT)
    else:
        os.close(stdin_w)
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return "timeout", now - started
            if now >= next_memory_check:
                if over_memory(job_processes(config["own_pid_namespace"]), job["memory_mb"] << 20, config):
                    return "memory", now - started
                next_memory_check = now + MEMORY_POLL_S
            events = poller.poll(max(min(deadline, next_memory_check) - now, 0.0) * 1000)
            for fd, _ in events:
                if fd == pidfd:
                    return None, time.monotonic() - started
                if fd == stdin_w:
                    try:
                        pending = pending[os.write(stdin_w, pending[: 1 << 16]) :]
                    except (BrokenPipeError, BlockingIOError):
                        pending = pending[:0]
                    if not pending:
                        poller.unregister(stdin_w)
                        os.close(stdin_w)
                    continue
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    sinks[fd].add(chunk)
                else:
                    poller.unregister(fd)
    finally:
        os.close(pidfd)
        if pending:
            os.close(stdin_w)


def _drain(fd: int, sink: _Output) -> None:
    """Read what is left in a channel whose writers are gone (never blocks)."""
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            return
        sink.add(chunk)


def _verdict(
    forced: str | None, wait_status: int, report: tuple[str, str | None, str | None] | None, stdout: _Output,
    stderr: _Output, duration: float,
) -> dict[str, Any]:
    """The result record: a limit that was hit, else the child's report, else how it died."""
    exit_code = os.waitstatus_to_exitcode(wait_status) if wait_status >= 0 else None
    status, error_type, error = forced, None, None
    if status is None:
        if report is not None:
            status, error_type, error = report
        elif exit_code == SETUP_FAILED:
            status, error_type, error = "crashed", "SandboxError", "the sandbox could not set the job up"
        elif exit_code == -signal.SIGXCPU:
            status = "timeout"
        elif exit_code is not None and exit_code < 0:
            status, error_type = "crashed", "Signal"
            error = f"killed by signal {signal.Signals(-exit_code).name}"
        else:
            status, error_type = "failed", "EarlyExit"
            error = f"the program exited with code {exit_code} before its end"
    return {
        "status": status, "exit_code": exit_code, "stdout": stdout.text(), "stderr": stderr.text(),
        "duration": duration, "error_type": error_type, "error": error,
        "truncated": stdout.truncated or stderr.truncated,
    }


# ----------------------------------------------------------------------------- main loops


def _set_up_site(path: list[str]) -> None:
    """What `site` would do, minus running .pth files (started with -S: forks are much cheaper)."""
    import site

    site.setquit()
    site.sethelper()
    site.setcopyright()
    sys.path.extend(p for p in path if p not in sys.path and os.path.isdir(p))


def _prepare(config: dict[str, Any], requests: int) -> None:
    """Set-up shared by the fork-server and the guard, before any job starts. Without a sandbox
    the host's first frame on `requests` is the jobs' seccomp filter (it names this process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as PID 1, signals without a handler are dropped
    for name in config["server_env"]:  # meant for the server alone
        os.environ.pop(name, None)
    _prctl(PR_SET_DUMPABLE, 0)  # no ptrace or /proc/<pid>/mem access to this process from jobs
    config["pid"] = os.getpid()
    if not config["own_pid_namespace"]:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _die_with_host(config)
        program = read_frame(requests)["filter"]
        config["job_filter"] = seccomp_loader(bytes.fromhex(program)) if program else None
    _set_up_site(config["path"])
    for name in config["preload"]:
        try:
            __import__(name)
        except Exception:
            pass
    config["max_fd"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    config["scratch_modes"] = {d: stat.S_IMODE(os.stat(d).st_mode) for d in config["scratch"]}


def serve(config: dict[str, Any]) -> None:
    """Answer batches of jobs, one result frame per job, until the host closes the pipe."""
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    _prepare(config, requests)
    gc.freeze()  # the collector then leaves the shared pages of forked children alone
    # No automatic collections in the server: each one writes to the headers of the objects it
    # walks, i.e. copy-on-write faults after every fork. The job loop makes no reference cycles;
    # a collection every GC_EVERY_BATCHES batches bounds what a surprise one would keep. Job
    # children collect as usual.
    gc.disable()
    state, memory = own_state(), _own_memory()  # as it is before anything else can touch it
    write_frame(replies, {"ready": True, "pid": os.getpid(), "uid": os.getuid(), "job_uid": config["job_uid"]})
    for done in itertools.count(1):
        try:
            batch = read_frame(requests)["jobs"]
        except EOFError:
            return
        if done % GC_EVERY_BATCHES == 0:
            gc.collect()
        for job in batch:
            if own_state() != state or _own_memory() - memory > SERVER_GROWTH_MB << 20:
                write_frame(replies, {"retire": True})  # changed (or grown): the host runs the job elsewhere
                return
            try:
                result = run_job(job, config)
            except Exception as exc:  # a failure of the server itself, never of the program
                result = {"status": "crashed", "exit_code": None, "stdout": "", "stderr": traceback.format_exc(),
                          "duration": 0.0, "error_type": "SandboxError", "error": f"{type(exc).__name__}: {exc}"}
            try:
                clean_up(config)
            except Exception:  # the sandbox is not clean: answer, then quit so that the host replaces it
                traceback.print_exc()
                write_frame(replies, {**result, "retire": True})
                return
            write_frame(replies, result)


RLIMITS = tuple(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_"))


def own_state() -> tuple:
    """What a job must not change about the fork-server: its limits, priority, CPUs and scheduling."""
    getrlimit = resource.getrlimit
    return ([getrlimit(r) for r in RLIMITS], os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0),
            os.sched_getscheduler(0))


def _own_memory() -> int:
    """This process's peak resident bytes so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10


def guard(config: dict[str, Any]) -> int:
    """Run ONE long-lived job that talks to the host over the inherited pipes, watch its memory,
    and when it ends kill whatever it left; returns the exit code that says how it ended."""
    _prepare(config, 0)
    job = read_frame(0)["job"]
    limits = job_limits(job["cpu_seconds"], job["memory_mb"], config["nproc"])
    null = os.open(os.devnull, os.O_RDWR)
    write_frame(1, {"ready": True, "pid": os.getpid(), "uid": os.getuid(), "job_uid": config["job_uid"]})
    pid = os.fork()
    if pid == 0:
        _child(job, limits, config, (0, 1, 2, null), None)
    os.dup2(null, 0)  # from now on only the job holds the host's pipes
    os.dup2(null, 1)
    memory = _wait_watching_memory(pid, int(job["memory_mb"]) << 20, config)
    wait_status = kill_everything(config["own_pid_namespace"]).get(pid, -1)
    return OUTCOME_BASE + OUTCOMES.index("memory" if memory else _outcome(wait_status))


def _wait_watching_memory(pid: int, limit: int, config: dict[str, Any]) -> bool:
    """Block until the job's process ends (False) or its processes go over `limit` bytes (True)."""
    pidfd = os.pidfd_open(pid)
    try:
        while not select.select([pidfd], [], [], GUARD_POLL_S)[0]:
            if over_memory(job_processes(config["own_pid_namespace"]), limit, config):
                return True
        return False
    finally:
        os.close(pidfd)


def _outcome(wait_status: int) -> str:
    """How an interactive job's process ended, from its wait status (-1: never reaped)."""
    code = os.waitstatus_to_exitcode(wait_status) if wait_status >= 0 else None
    if code == 0:
        return "exited"
    if code == -signal.SIGXCPU:
        return "timeout"
    if code is None or code < 0 or code == SETUP_FAILED:
        return "crashed"
    return "failed"


if __name__ == "__main__":
    _config = json.loads(sys.argv.pop(1))
    try:
        _code = guard(_config) if _config["role"] == "interactive" else serve(_config)
    finally:
        remove_scratch(_config)
    sys.exit(_code)
