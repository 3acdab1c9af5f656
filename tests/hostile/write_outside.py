"""Write outside the private temp dir: host /tmp, the Python installation, system dirs, a victim file."""
import json
import os
import sys

P = json.loads(sys.stdin.read())
targets = [P["host_tmp_marker"], P["victim"], P["victim"] + ".new", os.path.join(os.path.dirname(os.__file__), "pwned_by_job.py"),
           "/usr/pwned", "/etc/pwned", "/pwned", "/root/pwned", "/proc/sys/kernel/hostname"]
for path in targets:
    try:
        with open(path, "w") as f:
            f.write("pwned")
        print("WROTE", path)
    except OSError as exc:
        print("refused", path, exc.errno)
