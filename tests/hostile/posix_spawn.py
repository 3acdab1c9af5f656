"""Start long-running external programs (posix_spawn, subprocess in a new session) and return."""
import os
import subprocess

os.posix_spawn("/bin/sleep", ["sleep", "300"], {})
subprocess.Popen(["sleep", "301"], start_new_session=True)
subprocess.Popen(["sh", "-c", "sleep 302 & sleep 303"])
print("spawned")
