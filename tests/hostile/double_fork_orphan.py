"""Double fork with a new session: the grandchild is an orphan that tries to outlive the job."""
import os
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(300)
    os._exit(0)
os.wait()
print("orphan left behind")
