"""Re-open the harness's descriptors through /proc (its own, its parent's and PID 1's), for
reading (a secret) and for writing (a report); then fail."""
import os

targets = {"self", str(os.getppid()), "1"}
for pid in sorted(targets):
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError as exc:
        print("refused listing", pid, exc.errno)
        continue
    for name in names:
        path = f"/proc/{pid}/fd/{name}"
        for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):
            try:
                fd = os.open(path, flags)
            except OSError:
                continue
            if pid != "self":
                print("OPENED", path)
            try:
                if flags & os.O_WRONLY:
                    os.write(fd, b"P" + b"\0" * 16 + b"P" + b"passed\0\0")
                else:
                    os.read(fd, 4096)
            except OSError:
                pass
            os.close(fd)
raise AssertionError("this program fails")
