"""Write 600 MB to the report descriptor (and to every other descriptor above stderr), then end
normally: a flood the fork-server must not hold."""
import os

chunk = b"P" * (1 << 20)
for _ in range(600):
    try:
        os.write(3, chunk)
    except OSError:
        break
print("flooded")
