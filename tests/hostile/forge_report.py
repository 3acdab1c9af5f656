"""Write fake 'passed' reports to every descriptor the harness might read, then fail."""
import os

for fd in range(3, 64):
    for fake in (b"passed\0\0", b'{"status": "passed"}', b"0" * 32 + b"passed\0\0"):
        try:
            os.write(fd, fake)
        except OSError:
            pass
raise AssertionError("this program fails")
