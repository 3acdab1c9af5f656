"""kill(-1, SIGKILL): every process this job may signal, itself included."""
import os
import signal

os.kill(-1, signal.SIGKILL)
print("survived")
