"""Fail closed: when bubblewrap is missing or its start-up probe fails, nothing runs generated code
(Python API, eval, chat, serve) unless the user opts out explicitly, and the mode is recorded.
An interpreter started through `..` or a symlink runs sandboxed all the same."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from generation_helpers import make_model_dir
from mtpb_helpers import mtpb_path
from opencodegen.execution import sandbox as sandbox_module
from opencodegen.execution.sandbox import ISOLATION_ENV, IsolationUnavailable, resolve_isolation

SRC = Path(__file__).resolve().parents[1] / "src"
PROBE_FAILURE = "bwrap: setting up uid map: Permission denied"
OPT_OUTS = ("--isolation none", f"{ISOLATION_ENV}=none")

# Every way the Python API runs generated code; prints [error class, message] (or the result) of each.
API_SCRIPT = """
import json
from opencodegen.execution import ExecutionPool, isolation_report, run_program, spawn_interactive
from opencodegen.synthesis.interpreter import Interpreter
from opencodegen.synthesis.session import Session

def attempt(run):
    try:
        return ["ran", run()]
    except Exception as exc:
        return [type(exc).__name__, str(exc)]

print(json.dumps({
    "pool": attempt(lambda: ExecutionPool(workers=1).close()),
    "run_program": attempt(lambda: run_program("print(1)").stdout),
    "interactive": attempt(lambda: spawn_interactive("pass", memory_mb=64, cpu_seconds=5).close()),
    "interpreter": attempt(lambda: Interpreter().close()),
    "session": attempt(lambda: Session().add_turn("Say one.", "print(1)").output.stdout),
    "report": isolation_report()["mode"],
}))
"""

# A HumanEval problem that passes only in a sandbox: the project tree must be out of sight.
PROBLEM = {"task_id": "Sandboxed/0", "prompt": "def f():\n", "entry_point": "f",
           "test": f"import os\n\ndef check(candidate):\n    assert candidate() == 1\n"
                   f"    assert not os.path.exists({str(SRC)!r}), 'the project tree is visible'\n"}


def _env(path: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ISOLATION_ENV}
    return {**env, "PATH": path, "PYTHONPATH": str(SRC), **extra}


@pytest.fixture
def broken_bwrap(tmp_path) -> dict[str, str]:
    """An environment whose PATH finds a bubblewrap that fails at start-up (as it does without
    user namespaces): the probe fails."""
    directory = tmp_path / "fake-bin"
    directory.mkdir()
    fake = directory / "bwrap"
    fake.write_text(f"#!/bin/sh\necho '{PROBE_FAILURE}' >&2\nexit 1\n")
    fake.chmod(0o755)
    return _env(f"{directory}:{os.environ['PATH']}")


def _python(code: str, env: dict[str, str], python: str = sys.executable) -> dict:
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def _cli(args: list[str], env: dict[str, str], python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "opencodegen.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _assert_refusal(message: str, cause: str) -> None:
    assert "untrusted code runs in a sandbox or not at all" in message and cause in message
    assert all(opt_out in message for opt_out in OPT_OUTS)


def test_a_broken_probe_refuses_every_api_path(broken_bwrap):
    results = _python(API_SCRIPT, broken_bwrap)
    assert results.pop("report") == "unavailable"
    for path, (kind, message) in results.items():
        assert kind == "IsolationUnavailable", (path, kind, message)
        _assert_refusal(message, "bubblewrap is installed but its start-up probe failed")
        assert PROBE_FAILURE in message and "bwrap --ro-bind / / --unshare-all true" in message


def test_without_bubblewrap_every_api_path_refuses_and_names_the_package(tmp_path):
    results = _python(API_SCRIPT, _env(str(tmp_path)))  # a PATH without bwrap
    assert results.pop("report") == "unavailable"
    for path, (kind, message) in results.items():
        assert kind == "IsolationUnavailable", (path, kind, message)
        _assert_refusal(message, "bubblewrap (bwrap) is not installed")
        assert "apt install bubblewrap" in message


def test_opting_out_runs_unisolated_and_says_so(broken_bwrap):
    """The environment variable and the explicit argument both opt out; an explicit `bwrap` wins
    over the variable."""
    script = f"""
import json, os
from opencodegen.execution import ExecutionPool, run_program
from opencodegen.execution.sandbox import SandboxError
with ExecutionPool(workers=1) as pool:
    mode = pool.isolation.mode
    seen = pool.run("import os\\nprint(os.path.exists({str(SRC)!r}))").stdout
try:
    ExecutionPool(workers=1, isolation="bwrap")
    explicit = "ran"
except SandboxError as exc:
    explicit = str(exc)
print(json.dumps({{"mode": mode, "seen": seen, "run_program": run_program("print(2)").stdout,
                   "explicit_bwrap": explicit}}))
"""
    out = _python(script, {**broken_bwrap, ISOLATION_ENV: "none"})
    assert (out["mode"], out["seen"], out["run_program"]) == ("none", "True\n", "2\n")  # not isolated: it sees the tree
    _assert_refusal(out["explicit_bwrap"], PROBE_FAILURE)
    explicit = _python("import json\nfrom opencodegen.execution import ExecutionPool\n"
                       "with ExecutionPool(workers=1, isolation='none') as p:\n"
                       "    print(json.dumps({'mode': p.isolation.mode, 'out': p.run('print(3)').stdout}))",
                       broken_bwrap)
    assert explicit == {"mode": "none", "out": "3\n"}


def test_a_bad_environment_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(ISOLATION_ENV, "sandbox-please")
    with pytest.raises(sandbox_module.SandboxError, match=f"{ISOLATION_ENV}='sandbox-please' is not a mode"):
        resolve_isolation()
    with pytest.raises(ValueError, match="auto, bwrap or none"):
        resolve_isolation("off")


def test_a_failed_probe_is_remembered_and_reported(monkeypatch):
    """In-process: the probe runs once; every later request gets the same refusal without a retry."""
    calls = []
    monkeypatch.setattr(sandbox_module, "_plans", {})
    monkeypatch.delenv(ISOLATION_ENV, raising=False)
    monkeypatch.setattr(sandbox_module, "_probe", lambda wanted: calls.append(wanted) or "a simulated failure")
    for _ in range(2):
        with pytest.raises(IsolationUnavailable, match="a simulated failure"):
            resolve_isolation("auto")
    assert calls == ["bwrap"]
    report = sandbox_module.isolation_report()
    assert report["mode"] == "unavailable" and "a simulated failure" in report["reason"]


# ----------------------------------------------------------------------------- commands


def _humaneval_files(tmp_path: Path) -> list[str]:
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(PROBLEM) + "\n")
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": PROBLEM["task_id"], "completion": "    return 1\n"}) + "\n")
    return ["eval", "humaneval", "--samples", str(samples), "--problems", str(problems), "--k", "1", "--quiet"]


def test_eval_humaneval_refuses_then_opts_out_on_the_record(tmp_path, broken_bwrap):
    argv = _humaneval_files(tmp_path)
    refused = _cli([*argv, "--out", str(tmp_path / "refused")], broken_bwrap)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")
    _assert_refusal(refused.stderr, PROBE_FAILURE)
    assert not (tmp_path / "refused").exists()  # refused before any work
    by_flag = _cli([*argv, "--out", str(tmp_path / "flag"), "--isolation", "none"], broken_bwrap)
    by_env = _cli([*argv, "--out", str(tmp_path / "env")], {**broken_bwrap, ISOLATION_ENV: "none"})
    for done, out in ((by_flag, tmp_path / "flag"), (by_env, tmp_path / "env")):
        assert done.returncode == 0, done.stderr[-2000:]
        assert "isolation: none" in done.stdout and "WITHOUT A SANDBOX" in done.stderr
        assert json.loads((out / "run.json").read_text())["isolation"] == "none"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["isolation"] == "none" and summary["results"]["samples"]["pass@1"] == 0.0  # it saw the tree
    # resuming the unisolated run without the opt-out is refused, with or without a sandbox
    assert _cli([*argv, "--out", str(tmp_path / "flag")], broken_bwrap).returncode == 2
    mixed = _cli([*argv, "--out", str(tmp_path / "flag")], _env(os.environ["PATH"]))
    assert mixed.returncode == 2 and "isolation: 'none' -> 'bwrap-" in mixed.stderr


def test_eval_mtpb_refuses_then_opts_out_on_the_record(tmp_path, broken_bwrap):
    programs = tmp_path / "programs.jsonl"
    programs.write_text(json.dumps({"id": "1", "test": 0, "program": "print('x')"}) + "\n")
    argv = ["eval", "mtpb", "--data", str(mtpb_path()), "--programs", str(programs), "--problems", "1"]
    refused = _cli([*argv, "--out", str(tmp_path / "refused")], broken_bwrap)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    _assert_refusal(refused.stderr, PROBE_FAILURE)
    assert not (tmp_path / "refused").exists()
    done = _cli([*argv, "--out", str(tmp_path / "out"), "--isolation", "none"], broken_bwrap)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "isolation: none" in done.stdout
    assert json.loads((tmp_path / "out" / "config.json").read_text())["isolation"] == "none"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["isolation"] == "none"


def _through_dot_dot(tmp_path: Path) -> str:
    """sys.executable reached through a directory that exists only on the host: /tmp/.../a/../../..."""
    start = tmp_path / "a"
    start.mkdir()
    return "/".join([str(start), *[".."] * (len(start.parts) - 1), sys.executable.lstrip("/")])


def test_a_dot_dot_interpreter_path_runs_sandboxed(tmp_path):
    python = _through_dot_dot(tmp_path)
    assert ".." in python and os.path.samefile(python, sys.executable)
    argv = _humaneval_files(tmp_path)
    done = _cli([*argv, "--out", str(tmp_path / "out")], _env(os.environ["PATH"]), python=python)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert run["isolation"].startswith("bwrap-") and summary["isolation"] == run["isolation"]
    assert summary["results"]["samples"]["pass@1"] == 1.0  # the check saw no project tree
    assert f"isolation: {run['isolation']}" in done.stdout


def test_a_symlinked_interpreter_runs_sandboxed(tmp_path):
    link = tmp_path / "python"
    link.symlink_to(sys.executable)  # in /tmp: not visible inside a sandbox
    script = f"""
import json
from opencodegen.execution import ExecutionPool
with ExecutionPool(workers=1) as pool:
    result = pool.run("import os\\nprint(os.path.exists({str(SRC)!r}), os.path.exists({str(link)!r}))")
print(json.dumps({{"mode": pool.isolation.mode, "out": result.stdout}}))
"""
    out = _python(script, _env(os.environ["PATH"]), python=str(link))
    assert out["mode"].startswith("bwrap-") and out["out"] == "False False\n"


def test_chat_refuses_before_loading_the_model(tmp_path, broken_bwrap):
    done = _cli(["chat", "--model", str(tmp_path / "no-such-model")], broken_bwrap)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    _assert_refusal(done.stderr, PROBE_FAILURE)


def test_chat_opted_out_runs_and_prints_the_mode(tmp_path, broken_bwrap):
    model = make_model_dir(tmp_path / "tiny")
    script = "/code Print one.\nprint(1)\n/end\n"
    done = subprocess.run([sys.executable, "-m", "opencodegen.cli", "chat", "--model", str(model), "--device", "cpu",
                           "--isolation", "none"], input=script, capture_output=True, text=True, env=broken_bwrap,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "isolation: none" in done.stderr and "# Print one.\nprint(1)\n" in done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_refuses_at_start_up(tmp_path, broken_bwrap):
    done = _cli(["serve", "--model", str(tmp_path / "no-such-model"), "--port", str(_free_port())], broken_bwrap)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    _assert_refusal(done.stderr, PROBE_FAILURE)


def test_serve_opted_out_runs_sessions_in_the_recorded_mode(tmp_path, broken_bwrap):
    model = make_model_dir(tmp_path / "tiny")
    port = _free_port()
    command = [sys.executable, "-m", "opencodegen.cli", "serve", "--model", str(model), "--port", str(port),
               "--threads", "1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**broken_bwrap, ISOLATION_ENV: "none"})
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                httpx.get(url + "/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=60) as http:
            sid = http.post("/v1/sessions", json={}).json()["id"]
            code = f"import os\nprint(os.path.exists({str(SRC)!r}))"
            with http.stream("POST", f"/v1/sessions/{sid}/turns", json={"instruction": "Look.", "code": code}) as r:
                body = r.read().decode()
        assert r.status_code == 200 and '"stdout": "True\\n"' in body  # unisolated, as recorded
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0]
    assert "session code runs with isolation none" in output
