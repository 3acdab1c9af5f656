"""Pin the fork-server to one CPU."""
import os

for pid in {os.getppid(), 1}:
    try:
        os.sched_setaffinity(pid, {min(os.sched_getaffinity(0))})
        print("GAINED affinity", pid)
    except OSError as exc:
        print("refused", pid, exc.errno)
print("tried")
