"""Point the report descriptor somewhere else, or put a pipe of its own there, and write reports
into each; then fail."""
import os

for fd in range(3, 16):
    try:
        os.dup2(1, fd)  # the harness's report would go to stdout
    except OSError:
        pass
read_end, write_end = os.pipe()
os.dup2(write_end, 3)
os.write(3, b"passed\0\0")
os.write(1, b"P" * 17)
raise AssertionError("this program fails")
