"""No process of a sandbox outlives its host: SIGKILL a process that holds a session interpreter
(or an execution pool), idle or in the middle of a hanging program, in every isolation mode this
machine has; every process of its sandbox, including what the program started, and its scratch
directory are gone within seconds."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from execution_helpers import processes_with, sandbox_processes, wait_for
from opencodegen.execution import isolation_report

SRC = Path(__file__).resolve().parents[1] / "src"
HOST = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
kind, isolation, busy = sys.argv[2:]
if kind == "session":
    from opencodegen.synthesis.interpreter import Interpreter
    runner = Interpreter(isolation=isolation)
    mode = runner.process.isolation.mode
else:
    from opencodegen.execution import ExecutionPool
    runner = ExecutionPool(workers=1, isolation=isolation)
    mode = runner.isolation.mode
print(json.dumps({"mode": mode}), flush=True)
if busy == "busy":  # the marker is only in the environment: only the program's `sleep` shows it
    runner.run(f"import subprocess\\nsubprocess.Popen(['sleep', '{os.environ['MARKER']}'])\\nwhile True:\\n    pass",
               timeout=600)
time.sleep(600)
"""
AS_NOBODY = os.geteuid() == 0 and shutil.which("setpriv") and Path("/usr/bin/python3").exists()
MODES = {
    "auto": [],  # the strongest this user gets (bwrap-root as root)
    "none": [],  # the fallback without a sandbox
    "user": ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],  # bwrap-user, as nobody
}


def _first_line(process: subprocess.Popen, seconds: float = 60.0) -> str:
    if not select.select([process.stdout], [], [], seconds)[0]:
        return ""
    return process.stdout.readline()


@pytest.mark.parametrize("busy", ["busy", "idle"])
@pytest.mark.parametrize("kind", ["session", "pool"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_nothing_of_a_sandbox_outlives_its_killed_host(mode, kind, busy, tmp_path):
    if mode == "auto" and not isolation_report()["mode"].startswith("bwrap"):
        pytest.skip("no sandbox here (auto refuses to run; the fallback is tested as 'none')")
    if mode == "user" and not (AS_NOBODY and shutil.which("bwrap")):
        pytest.skip("needs root, setpriv, bwrap and a system python to run as another user")
    python = "/usr/bin/python3" if mode == "user" else sys.executable
    marker = str(10**9 + time.time_ns() % 10**9)  # a `sleep` argument no other process has
    tmp_path.chmod(0o777)
    host = subprocess.Popen(
        [*MODES[mode], python, "-I", "-c", HOST, str(SRC), kind, "auto" if mode == "user" else mode, busy],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MARKER": marker},
    )
    try:
        line = _first_line(host)
        if not line and mode == "user" and "No module named" in (error := host.communicate(timeout=5)[1]):
            pytest.skip(f"the system python cannot import what opencodegen needs: {error[-300:]}")
        assert line, host.communicate(timeout=5)[1][-3000:]
        expected = {"auto": isolation_report()["mode"], "none": "none", "user": "bwrap-user"}[mode]
        assert json.loads(line)["mode"] == expected
        if busy == "busy":
            assert wait_for(lambda: processes_with(marker), seconds=30)  # the hanging program runs

        def sandbox() -> dict[int, dict]:
            return {pid: c for pid, c in sandbox_processes().items() if c["host"] == host.pid}

        configs = list(sandbox().values())
        assert configs and {c["role"] for c in configs} == {"interactive" if kind == "session" else "fork-server"}
        scratch = {path for c in configs for path in c["scratch"] if mode == "none"}
        assert all(os.path.isdir(path) for path in scratch)
        os.kill(host.pid, signal.SIGKILL)
        host.wait()
        assert wait_for(lambda: not sandbox() and not processes_with(marker), seconds=10), (sandbox(), marker)
        assert wait_for(lambda: not any(os.path.exists(path) for path in scratch)), scratch
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


FALLBACK_HOST = """
import json, os, signal, sys, time
sys.path[:0] = sys.argv[1:3]
from execution_helpers import processes_with, wait_for
from opencodegen.execution import ExecutionPool
marker = os.environ["MARKER"]  # only in the environment: only the daemon's `sleep` shows it
DAEMON = f'''
import os, signal, sys, time
if os.fork() == 0:
    try:
        os.setsid()
    except OSError:
        pass
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "{marker}"])
    os._exit(0)
os.wait()
server = os.getppid()
with open(f"/proc/{{server}}/stat") as f:
    host = int(f.read().rsplit(")", 1)[1].split()[1])
refused = []
for target in (server, host, -server, -os.getpgid(host), -1):  # signal 0: a permission check only
    try:
        os.kill(target, 0)
    except PermissionError:
        refused.append(target)
for call in (os.setsid, lambda: os.setpgid(0, os.getpgid(server))):
    try:
        call()
    except PermissionError:
        refused.append(call.__name__)
try:
    os.kill(server, signal.SIGKILL)
except PermissionError:
    refused.append("SIGKILL")
print(len(refused))
if sys.argv[-1] == "hang":
    time.sleep(60)
'''
with ExecutionPool(workers=1, isolation="none") as pool:
    (server,) = pool.process_ids()
    first = pool.run(DAEMON, timeout=10)
    first_gone = wait_for(lambda: not processes_with(marker))
    same_server = pool.process_ids() == [server]
    hanging = pool.submit(source=DAEMON.replace("sys.argv[-1]", "'hang'"), timeout=3)
    assert wait_for(lambda: processes_with(marker), seconds=30)
    os.kill(server, signal.SIGKILL)  # the server dies while its job's daemon runs
    second = hanging.result()
    replaced = pool.process_ids() != [server]
gone = wait_for(lambda: not processes_with(marker))
print(json.dumps({"first": [first.status, first.stdout], "first_gone": first_gone,
                  "same_server": same_server, "second": second.status, "replaced": replaced, "gone": gone}))
"""


@pytest.mark.parametrize("user", ["invoking", "nobody"])
def test_nothing_outlives_a_fallback_job_or_its_killed_server(user, tmp_path):
    """Without a sandbox a job cannot leave its server's session, signal its server or the host,
    and what it left when its server died is killed by the host."""
    if user == "nobody" and not AS_NOBODY:
        pytest.skip("needs root, setpriv and a system python to run as another user")
    python = "/usr/bin/python3" if user == "nobody" else sys.executable
    marker = str(10**9 + time.time_ns() % 10**9)
    tmp_path.chmod(0o777)
    done = subprocess.run(
        [*MODES["user" if user == "nobody" else "none"], python, "-I", "-c", FALLBACK_HOST, str(SRC),
         str(Path(__file__).parent)],
        capture_output=True, text=True, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MARKER": marker},
        timeout=300,
    )
    try:
        if "No module named" in done.stderr:
            pytest.skip(f"the system python cannot import what opencodegen needs: {done.stderr[-300:]}")
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.splitlines()[-1])
        assert out["first"] == ["passed", "8\n"], out  # every signal, setsid, setpgid and the kill refused
        assert out["first_gone"] and out["same_server"]
        assert out["second"] in ("crashed", "timeout") and out["replaced"], out
        assert out["gone"], "a job's daemon outlived its killed fork-server"
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
