"""Delete a victim file and a victim directory that live in the (read-only) Python installation."""
import json
import os
import shutil
import sys

P = json.loads(sys.stdin.read())
for attempt in (lambda: os.remove(P["victim"]), lambda: shutil.rmtree(P["victim_dir"]),
                lambda: os.rename(P["victim"], P["victim"] + ".moved"), lambda: os.truncate(P["victim"], 0),
                lambda: os.chmod(P["victim"], 0)):
    try:
        attempt()
        print("DONE")
    except OSError as exc:
        print("refused", exc.errno)
