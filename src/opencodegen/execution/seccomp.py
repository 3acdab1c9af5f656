"""The seccomp filters of the sandbox, as classic-BPF programs (bytes for bwrap's --seccomp or
for PR_SET_SECCOMP).

`sandbox_filter` is loaded by bubblewrap for everything in a sandbox (its fork-server and every
job); `fallback_filter` by each job's child without a sandbox, where jobs share the host's pids,
sessions and System V IPC. Both refuse (EPERM) what a Python program never needs and what would
let a job reach beyond itself: kernel keyrings (they outlive processes), memfds (memory no limit
sees), io_uring, user namespaces (root mode's jobs would get a full capability set in one),
userfaultfd, perf events and bpf (the usual first steps of kernel exploits), and changing the
limits, priority or CPUs of any process but the caller (the fork-server shares the jobs' uid
when not running as root). Foreign ABIs and x32 are refused; clone3 gets ENOSYS, so that the C
library falls back to clone, whose flags the filter can see.
"""

from __future__ import annotations

import errno
import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass

LOAD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
ALLOW = 0x7FFF0000
CLONE_NEWUSER = 0x10000000
PRIO_PROCESS, PRIO_PGRP = 0, 1
IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP = 1, 2


def _errno(code: int) -> int:
    return 0x00050000 | code


DENY = _errno(errno.EPERM)


@dataclass(frozen=True)
class Machine:
    audit_arch: int
    numbers: dict[str, int]
    x32: bool  # x86_64: numbers from 0x40000000 are the x32 ABI's


_COMMON = {"clone3": 435, "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
           "io_uring_register": 427, "memfd_secret": 447}
MACHINES = {
    "x86_64": Machine(0xC000003E, {
        **_COMMON, "add_key": 248, "request_key": 249, "keyctl": 250, "memfd_create": 319, "userfaultfd": 323,
        "perf_event_open": 298, "bpf": 321, "clone": 56, "unshare": 272, "prlimit64": 302, "setpriority": 141,
        "sched_setaffinity": 203, "sched_setscheduler": 144, "sched_setparam": 142, "sched_setattr": 314,
        "ioprio_set": 251, "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129,
        "rt_tgsigqueueinfo": 297, "setsid": 112, "setpgid": 109, "shmget": 29, "msgget": 68, "semget": 64,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311}, x32=True),
    "aarch64": Machine(0xC00000B7, {
        **_COMMON, "add_key": 217, "request_key": 218, "keyctl": 219, "memfd_create": 279, "userfaultfd": 282,
        "perf_event_open": 241, "bpf": 280, "clone": 220, "unshare": 97, "prlimit64": 261, "setpriority": 140,
        "sched_setaffinity": 122, "sched_setscheduler": 119, "sched_setparam": 118, "sched_setattr": 274,
        "ioprio_set": 30, "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138,
        "rt_tgsigqueueinfo": 240, "setsid": 157, "setpgid": 154, "shmget": 194, "msgget": 186, "semget": 190,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271}, x32=False),
}
REFUSED = ("add_key", "request_key", "keyctl", "memfd_create", "memfd_secret", "io_uring_setup", "io_uring_enter",
           "io_uring_register", "userfaultfd", "perf_event_open", "bpf")
OWN_PROCESS_ONLY = ("prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr")
# Without a sandbox: a job stays in the fork-server's session (so that the host can find all of it),
# creates no System V IPC objects (they would be the host's) and cannot signal or trace the server
# or the host.
FALLBACK_REFUSED = ("setsid", "setpgid", "shmget", "msgget", "semget", "tkill", "pidfd_send_signal", "ptrace",
                    "process_vm_readv", "process_vm_writev")


class _Program:
    """A tiny classic-BPF assembler: jumps name labels, resolved when the program is assembled."""

    def __init__(self) -> None:
        self.code: list[tuple] = []
        self.labels: dict[str, int] = {}

    def load(self, offset: int) -> None:
        self.code.append((LOAD, offset))

    def jump(self, op: int, k: int, if_true: str | None, if_false: str | None = None) -> None:
        self.code.append((op, k, if_true, if_false))  # None: the next instruction

    def ret(self, value: int) -> None:
        self.code.append((RET, value))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (op, k, *targets) in enumerate(self.code):
            offsets = [0 if t is None else self.labels[t] - i - 1 for t in targets] or [0, 0]
            if not all(0 <= o < 256 for o in offsets):
                raise ValueError("seccomp program too long for its jumps")
            out += (op).to_bytes(2, sys.byteorder) + bytes(offsets) + k.to_bytes(4, sys.byteorder)
        return bytes(out)


def _arg(index: int) -> int:
    """Offset in struct seccomp_data of the low 32 bits of syscall argument `index` (pid_t and
    int arguments: the kernel ignores the high half)."""
    return 16 + 8 * index + (4 if sys.byteorder == "big" else 0)


def _build(machine: Machine, protected: Iterable[int] | None) -> bytes:
    nr = machine.numbers
    p = _Program()
    p.load(4)
    p.jump(JEQ, machine.audit_arch, None, "deny")
    p.load(0)
    if machine.x32:
        p.jump(JGE, 0x40000000, "deny")
    refused = REFUSED + (FALLBACK_REFUSED if protected is not None else ())
    for name in refused:
        p.jump(JEQ, nr[name], "deny")
    p.jump(JEQ, nr["clone3"], "enosys")
    for name in ("clone", "unshare"):
        p.jump(JEQ, nr[name], "flags")
    for name in OWN_PROCESS_ONLY:
        p.jump(JEQ, nr[name], "own")
    p.jump(JEQ, nr["setpriority"], "priority")
    p.jump(JEQ, nr["ioprio_set"], "ioprio")
    if protected is not None:
        for name in ("kill", "rt_sigqueueinfo", "tgkill", "rt_tgsigqueueinfo"):
            p.jump(JEQ, nr[name], "signal")
    p.ret(ALLOW)
    p.label("flags")  # clone / unshare: no new user namespace
    p.load(_arg(0))
    p.jump(JSET, CLONE_NEWUSER, "deny")
    p.ret(ALLOW)
    p.label("own")  # pid 0 only: the caller itself
    p.load(_arg(0))
    p.jump(JEQ, 0, None, "deny")
    p.ret(ALLOW)
    p.label("priority")  # setpriority(PRIO_PROCESS or PRIO_PGRP, 0, ...): the caller or its group
    p.load(_arg(1))
    p.jump(JEQ, 0, None, "deny")
    p.load(_arg(0))
    p.jump(JGE, PRIO_PGRP + 1, "deny")
    p.ret(ALLOW)
    p.label("ioprio")  # ioprio_set(IOPRIO_WHO_PROCESS or IOPRIO_WHO_PGRP, 0, ...)
    p.load(_arg(1))
    p.jump(JEQ, 0, None, "deny")
    p.load(_arg(0))
    p.jump(JEQ, IOPRIO_WHO_PROCESS, "allow")
    p.jump(JEQ, IOPRIO_WHO_PGRP, "allow", "deny")
    if protected is not None:
        p.label("signal")  # the first argument (pid or thread group) must not name a protected one
        p.load(_arg(0))
        for pid in sorted({pid & 0xFFFFFFFF for pid in protected}):
            p.jump(JEQ, pid, "deny")
    p.label("allow")
    p.ret(ALLOW)
    p.label("deny")
    p.ret(DENY)
    p.label("enosys")
    p.ret(_errno(errno.ENOSYS))
    return p.assemble()


def _machine() -> Machine | None:
    return MACHINES.get(platform.machine())


def sandbox_filter() -> bytes | None:
    """The filter of a whole sandbox, or None on a machine this module does not know."""
    machine = _machine()
    return None if machine is None else _build(machine, None)


def fallback_filter(server: int, host: int, host_group: int) -> bytes | None:
    """The filter of one job without a sandbox: the sandbox filter, plus no new session or process
    group, no System V IPC objects, no tracing, and no signal to the server, the host, their
    process groups or every process at once (kill(-1))."""
    machine = _machine()
    if machine is None:
        return None
    return _build(machine, (server, host, -server, -host_group, -1))
