"""spawn_interactive: one long-lived sandboxed job on pipes; how it ended; nothing left after it."""

from __future__ import annotations

import json
import os

import pytest

from execution_helpers import sandbox_processes, wait_for
from opencodegen.execution import SandboxedProcess, SandboxError, isolation_report, spawn_interactive

ECHO = """
import json, os, sys
print(json.dumps({"cwd": os.getcwd(), "files": sorted(os.listdir(".")), "data": open("data/in.txt").read(),
                  "env": sorted(os.environ)}), flush=True)
for line in sys.stdin:
    print(line.strip().upper(), flush=True)
"""
FORKED_MEMORY = """
import os, time
for _ in range(3):
    if os.fork() == 0:
        block = bytearray(120 << 20)
        block[::4096] = b"x" * len(block[::4096])
        time.sleep(60)
time.sleep(60)
"""
MODES = ["auto", "none"]


def _lines(process: SandboxedProcess, count: int) -> list[str]:
    data = b""
    while data.count(b"\n") < count:
        chunk = os.read(process.stdout.fileno(), 1 << 16)
        assert chunk, process.log_text()
        data += chunk
    return data.decode().splitlines()


@pytest.mark.parametrize("isolation", MODES)
def test_a_job_talks_over_pipes_in_its_private_directory_and_exits(isolation):
    process = spawn_interactive(ECHO, memory_mb=256, cpu_seconds=30, isolation=isolation,
                                files={"data/in.txt": "given"})
    try:
        assert process.isolation.mode == (isolation_report()["mode"] if isolation == "auto" else "none")
        first = json.loads(_lines(process, 1)[0])
        assert first["data"] == "given" and first["files"] == ["data"]
        assert "OPENCODEGEN" not in " ".join(first["env"]) and "PYTEST_CURRENT_TEST" not in first["env"]
        if isolation == "none":
            assert first["cwd"] == os.path.join(process.scratch, "job")
        os.write(process.stdin.fileno(), b"one\ntwo\n")
        assert _lines(process, 2) == ["ONE", "TWO"]
        process.stdin.close()  # end of input: the program ends
        assert process.wait(30) is not None and process.outcome == "exited"
    finally:
        process.close()
    assert process.scratch is None or not os.path.exists(process.scratch)


@pytest.mark.parametrize("isolation", MODES)
def test_outcomes_say_how_a_job_ended(isolation):
    cases = {"failed": "raise SystemExit(3)", "crashed": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
             "timeout": "while True:\n    pass", "memory": FORKED_MEMORY}
    for expected, source in cases.items():
        with spawn_interactive(source, memory_mb=200, cpu_seconds=1, isolation=isolation) as process:
            assert process.wait(30) is not None, expected
            assert process.outcome == expected, process.log_text()
            assert os.read(process.stdout.fileno(), 1) == b""  # nothing holds the pipe any more


@pytest.mark.parametrize("isolation", MODES)
def test_kill_stops_the_job_and_everything_it_started(isolation):
    source = "import os, subprocess, sys\nsubprocess.Popen(['sleep', '600'])\nprint(os.getpid(), flush=True)\nsys.stdin.read()"
    process = spawn_interactive(source, memory_mb=256, cpu_seconds=30, isolation=isolation)
    assert process.outcome is None
    _lines(process, 1)
    mine = [pid for pid, config in sandbox_processes().items() if config["host"] == os.getpid()
            and config["role"] == "interactive"]
    assert mine
    process.close(wait=0)
    assert process.outcome == "killed"
    assert wait_for(lambda: not set(mine) & set(sandbox_processes()))
    assert process.scratch is None or not os.path.exists(process.scratch)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="positive"):
        spawn_interactive("pass", memory_mb=0, cpu_seconds=1)
    with pytest.raises(ValueError, match="relative path"):
        spawn_interactive("pass", memory_mb=64, cpu_seconds=1, files={"../x": "y"})
    with pytest.raises(SandboxError, match="cannot start"):
        spawn_interactive("pass", memory_mb=64, cpu_seconds=1, preload=["x" * 200_000])  # too long a command line
