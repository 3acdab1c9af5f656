"""Kill the own process group."""
import os
import signal

os.killpg(0, signal.SIGKILL)
