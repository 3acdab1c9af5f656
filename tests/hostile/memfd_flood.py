"""Hold memory no process limit sees: memfds and memfd_secret (480 MB if allowed)."""
import ctypes
import os
import platform

try:
    fd = os.memfd_create("hoard")
    print("CREATED memfd")
    for _ in range(8):
        os.write(fd, b"x" * (60 << 20))
except OSError as exc:
    print("refused memfd", exc.errno)
libc = ctypes.CDLL(None, use_errno=True)
if libc.syscall(447, 0) >= 0:  # memfd_secret
    print("CREATED memfd_secret")
print(platform.machine())
