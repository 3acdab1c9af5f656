"""Fork: the copy finishes the program (as if it passed) and keeps writing reports to every
descriptor after the original failed."""
import os
import time

pid = os.fork()
if pid == 0:
    time.sleep(0.2)
    for _ in range(20):
        for fd in range(3, 32):
            try:
                os.write(fd, b"P")
            except OSError:
                pass
        time.sleep(0.01)
else:
    raise AssertionError("the original fails")
