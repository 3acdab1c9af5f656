"""Fill every writable place until it is full."""
import os

for root in (".", "/tmp", "/dev/shm"):
    try:
        with open(os.path.join(root, "filler"), "wb") as f:
            while True:
                f.write(b"\0" * (1 << 20))
    except OSError as exc:
        print(root, "full", exc.errno)
