"""Leave a secret everywhere a later job might look (cwd, /tmp, /dev/shm, /dev, System V shared
memory), then lock the scratch directories so that the next job cannot even start."""
import ctypes
import json
import os
import sys

P = json.loads(sys.stdin.read())
for path in ("secret.txt", "/tmp/secret.txt", "/dev/shm/secret.txt", "/dev/secret.txt"):
    try:
        with open(path, "w") as f:
            f.write(P["job_secret"])
    except OSError as exc:
        print("refused", path, exc.errno)
libc = ctypes.CDLL(None)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(4242, 4096, 0o1000 | 0o666)
ctypes.memmove(libc.shmat(shm, None, 0), P["job_secret"].encode(), len(P["job_secret"]))
for directory in ("/tmp", "/dev/shm"):
    try:
        os.chmod(directory, 0)
    except OSError as exc:
        print("refused chmod", directory, exc.errno)
print("left secrets")
