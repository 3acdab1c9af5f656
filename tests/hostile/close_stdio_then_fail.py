"""Close stdin, stdout and stderr, then fail: the failure must still be seen."""
import os

for fd in (0, 1, 2):
    os.close(fd)
raise AssertionError("hidden failure")
