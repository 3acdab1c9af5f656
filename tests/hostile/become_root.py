"""Try to gain privileges: setuid(0), capabilities, a new user namespace with a root mapping."""
import ctypes
import os

for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.setgroups([0])):
    try:
        attempt()
        print("GAINED")
    except OSError as exc:
        print("refused", exc.errno)
print(open("/proc/self/status").read().split("CapInh")[1][:120])
libc = ctypes.CDLL(None, use_errno=True)
print("unshare(CLONE_NEWUSER) ->", libc.unshare(0x10000000), ctypes.get_errno())
print("uid", os.getuid())
