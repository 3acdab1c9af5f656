"""Fork as many sleeping children as allowed, then finish normally, leaving them behind."""
import os
import time

count = 0
while count < 10_000:
    try:
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
        count += 1
    except OSError:
        break
print("forked", count)
