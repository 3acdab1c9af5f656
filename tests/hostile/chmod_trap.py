"""Leave directories nobody may enter, to break the cleanup."""
import os

for root in ("trap", "/tmp/trap", "/dev/shm/trap"):
    os.makedirs(f"{root}/inner", exist_ok=True)
    with open(f"{root}/inner/file", "w") as f:
        f.write("x")
    os.chmod(f"{root}/inner", 0)
    os.chmod(root, 0)
print("trapped")
