"""Lower the fork-server's limits (open files, processes, memory, CPU) so that every later job
on this worker fails."""
import os
import resource

for pid in {os.getppid(), 1}:
    for which, value in ((resource.RLIMIT_NOFILE, (8, 8)), (resource.RLIMIT_NPROC, (1, 1)),
                         (resource.RLIMIT_AS, (1 << 20, 1 << 20)), (resource.RLIMIT_CPU, (1, 1)),
                         (resource.RLIMIT_FSIZE, (0, 0))):
        try:
            resource.prlimit(pid, which, value)
            print("GAINED", pid, which)
        except OSError as exc:
            print("refused", pid, which, exc.errno)
