"""Create a user namespace (with its full capability set) by unshare, clone and clone3."""
import ctypes
import os

CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(CLONE_NEWUSER) == 0:
    print("CREATED by unshare")
pid = libc.syscall(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)  # raw clone, x86_64 argument order
if pid == 0:
    os._exit(0)
if pid > 0:
    print("CREATED by clone")
    os.waitpid(pid, 0)


class CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal",
                                                      "stack", "stack_size", "tls")]


args = CloneArgs(flags=CLONE_NEWUSER, exit_signal=SIGCHLD)
pid = libc.syscall(435, ctypes.byref(args), ctypes.sizeof(args))
if pid == 0:
    os._exit(0)
if pid > 0:
    print("CREATED by clone3")
    os.waitpid(pid, 0)
print("tried", ctypes.get_errno())
