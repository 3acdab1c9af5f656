"""Signal the fork-server by every other route: tgkill, rt_sigqueueinfo, pidfd_send_signal,
killpg; then finish. (Where a signal is delivered, the server, PID 1 of its namespace, drops it.)"""
import ctypes
import os
import signal

libc = ctypes.CDLL(None, use_errno=True)
for pid in {os.getppid(), 1}:
    for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGKILL):
        libc.syscall(234, pid, pid, sig)  # tgkill
        libc.syscall(129, pid, sig, None)  # rt_sigqueueinfo
        try:
            pidfd = os.pidfd_open(pid)
            signal.pidfd_send_signal(pidfd, sig)
            print("delivered", sig, "by pidfd to", pid)
        except OSError as exc:
            print("refused pidfd", pid, exc.errno)
        try:
            os.killpg(os.getpgid(pid), sig)
            print("delivered", sig, "to group of", pid)
        except OSError as exc:
            print("refused killpg", pid, exc.errno)
print("still here")
