"""Look for what earlier jobs left behind: files in /tmp, /dev/shm and /dev, System V shared memory."""
import ctypes
import os

print("/dev holds", sorted(os.listdir("/dev")))
for root in ("/tmp", "/dev/shm", "."):
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                with open(os.path.join(directory, name), "rb") as f:
                    print(directory, name, f.read(200))
            except OSError as exc:
                print(directory, name, "refused", exc.errno)
libc = ctypes.CDLL(None)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(4242, 0, 0o666)
if shm >= 0:
    print("SHARED MEMORY", ctypes.string_at(libc.shmat(shm, None, 0), 64))
