"""Look for secrets in the environment of this process and of every process it can see."""
import os

print(dict(os.environ))
for pid in ["self", *[p for p in os.listdir("/proc") if p.isdigit()]]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            print(pid, f.read())
    except OSError as exc:
        print(pid, "refused", exc.errno)
