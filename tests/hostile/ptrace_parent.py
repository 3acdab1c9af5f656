"""Attach to the fork-server with ptrace and read its memory and descriptors through /proc."""
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
for pid in {os.getppid(), 1}:
    if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
        print("ATTACHED", pid)
    for path in (f"/proc/{pid}/mem", f"/proc/{pid}/environ", f"/proc/{pid}/fd/0"):
        try:
            open(path, "rb").read(1)
            print("OPENED", path)
        except OSError as exc:
            print("refused", path, exc.errno)
    try:
        print("OPENED", os.listdir(f"/proc/{pid}/fd"))
    except OSError as exc:
        print("refused fd listing", exc.errno)
