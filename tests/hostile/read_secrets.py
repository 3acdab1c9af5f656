"""Read host files: a secret file of the test, shell history, shadow passwords, project notes."""
import json
import sys

P = json.loads(sys.stdin.read())
for path in (P["secret_file"], "/root/.bash_history", "/etc/shadow", "/work/notes/COMMON.md", "/proc/1/root/etc/shadow"):
    try:
        with open(path) as f:
            print(path, f.read()[:200])
    except OSError as exc:
        print(path, "refused", exc.errno)
