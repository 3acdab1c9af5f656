"""The hostile-program suite: every attack is contained, the host is unchanged, no process survives,
and the legitimate jobs of the same batch are scored correctly."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import uuid
from pathlib import Path

import pytest

from opencodegen.evaluation.humaneval import load_problems, program
from opencodegen.execution import ExecutionPool, isolation_report

HOSTILE = Path(__file__).parent / "hostile"
SITE = Path(json.__file__).parent.parent / "site-packages"

EXPECT = {
    "write_outside": {"passed"}, "delete_files": {"passed"}, "network_loopback": {"passed"},
    "network_outside": {"passed"}, "fork_bomb": {"timeout", "memory"}, "fork_bomb_exit": {"passed"},
    "double_fork_orphan": {"passed"}, "posix_spawn": {"passed"}, "memory_bomb": {"memory"},
    "memory_bomb_forked": {"memory"}, "infinite_loop": {"timeout"}, "sleep_forever": {"timeout"},
    "spinning_threads": {"timeout"}, "huge_output": {"passed"}, "stderr_flood": {"timeout"},
    "env_secrets": {"passed"}, "read_secrets": {"passed"}, "close_stdio_then_fail": {"failed"},
    "close_all_fds_then_fail": {"failed"}, "kill_parent": {"passed"}, "kill_everyone": {"failed", "crashed"},
    "kill_own_group": {"crashed"}, "ptrace_parent": {"passed"}, "become_root": {"passed"},
    "sys_exit_fake_pass": {"failed"}, "os_exit_fake_pass": {"failed"}, "atexit_fake_pass": {"failed"},
    "patch_checker": {"failed"}, "forge_report": {"failed"}, "other_job_writer": {"passed"},
    "other_job_reader": {"passed"}, "chmod_trap": {"passed"}, "fill_disk": {"passed"},
    "fd_exhaustion": {"passed"}, "segfault": {"crashed"}, "recursion_crash": {"crashed"},
    "keyring_leak": {"passed"},
}  # fmt: skip
NEVER_PRINTED = ("DONE", "CONNECTED", "SENT", "GAINED", "ATTACHED", "OPENED", "STORED")
OUTPUT_LIMIT = 1 << 16

pytestmark = pytest.mark.skipif(
    not isolation_report()["mode"].startswith("bwrap"), reason="no sandbox here: hostile programs must not run unisolated"
)


def test_the_suite_is_complete():
    assert sorted(p.stem for p in HOSTILE.glob("*.py")) == sorted(EXPECT)
    assert len(EXPECT) >= 25


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{task}/children") as f:
                children = [int(x) for x in f.read().split()]
        found += children
        todo += children
    return found


def assert_nothing_left(pool: ExecutionPool) -> None:
    """Under each worker process (bubblewrap) lives exactly the fork-server, with no children."""
    for pid in pool.process_ids():
        tree = descendants(pid)
        assert len(tree) == 1, f"processes left in sandbox {pid}: {tree}"
        with open(f"/proc/{tree[0]}/cmdline", "rb") as f:
            assert b"<sandbox-server>" in f.read()


@pytest.fixture
def host(tmp_path, monkeypatch):
    """Things on the host the programs go after, and a listener that counts connections."""
    tag = uuid.uuid4().hex[:12]
    secret = f"TOPSECRET-{tag}"
    (tmp_path / "secret.txt").write_text(secret)
    monkeypatch.setenv("OPENCODEGEN_TEST_SECRET", secret)
    victim = SITE / f"opencodegen_hostile_victim_{tag}.txt"
    victim_dir = SITE / f"opencodegen_hostile_victim_{tag}"
    victim.write_text("intact")
    victim_dir.mkdir()
    (victim_dir / "file.txt").write_text("intact")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    params = {"secret_file": str(tmp_path / "secret.txt"), "secret": secret, "victim": str(victim),
              "victim_dir": str(victim_dir), "port": listener.getsockname()[1],
              "host_tmp_marker": f"/tmp/opencodegen-hostile-{tag}", "job_secret": f"JOBSECRET-{tag}"}  # fmt: skip
    try:
        yield params, accepted
    finally:
        stop.set()
        thread.join()
        listener.close()
        victim.unlink(missing_ok=True)
        shutil.rmtree(victim_dir, ignore_errors=True)
        Path(params["host_tmp_marker"]).unlink(missing_ok=True)


def legit_jobs() -> list[tuple[dict, str, str | None]]:
    """(job, expected status, expected stdout) for ordinary programs."""
    jobs: list[tuple[dict, str, str | None]] = []
    for problem in load_problems(limit=24):
        jobs.append(({"source": program(problem, problem.canonical_solution), "timeout": 5}, "passed", None))
        jobs.append(({"source": program(problem, "    return None\n"), "timeout": 5}, "failed", None))
    for i in range(8):
        jobs.append(({"source": f"print(sum(range({i * 1000})))"}, "passed", f"{sum(range(i * 1000))}\n"))
    science = "import numpy, pandas, sklearn.linear_model\nprint(int(numpy.arange(10).sum()), len(pandas.DataFrame({'a': [1, 2]})))"
    jobs.append(({"source": science, "timeout": 60}, "passed", "45 2\n"))
    jobs.append(({"source": "import sys\nprint(sys.stdin.read().upper())", "stdin": "hi"}, "passed", "HI\n"))
    return jobs


def check_hostile(name: str, result, params: dict) -> None:
    assert result.status in EXPECT[name], (name, result)
    output = result.stdout + result.stderr
    for word in NEVER_PRINTED:
        assert word not in output, (name, output[:2000])
    for secret in (params["secret"], params["job_secret"]):
        assert secret not in output or name == "other_job_writer", (name, output[:2000])
    if name == "write_outside":
        wrote = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("WROTE")]
        assert wrote == [params["host_tmp_marker"]], wrote  # only the sandbox's private /tmp is writable
    if name in ("huge_output", "stderr_flood"):
        assert result.truncated and len(output) <= 2 * OUTPUT_LIMIT


def test_hostile_batch_is_contained(host):
    params, accepted = host
    hostile = [(name, {"source": (HOSTILE / f"{name}.py").read_text(), "stdin": json.dumps(params), "timeout": 3,
                       "memory_mb": 256, "output_limit": OUTPUT_LIMIT}) for name in sorted(EXPECT)]  # fmt: skip
    legit = legit_jobs()
    batch: list[tuple[str | None, dict]] = []
    for i in range(max(len(hostile), len(legit))):
        if i < len(legit):
            batch.append((None, legit[i][0]))
        if i < len(hostile):
            batch.append(hostile[i])
    with ExecutionPool(workers=2) as pool:
        workers_before = pool.process_ids()
        results = list(pool.map(job for _, job in batch))
        legit_results = iter(zip(legit, [r for (name, _), r in zip(batch, results) if name is None]))
        for (name, _), result in zip(batch, results):
            if name is not None:
                check_hostile(name, result, params)
                continue
            (_, status, stdout), got = next(legit_results)
            assert got.status == status, got
            if stdout is not None:
                assert got.stdout == stdout
        assert pool.process_ids() == workers_before  # no worker was killed or replaced
        assert_nothing_left(pool)
    assert accepted == []
    assert Path(params["victim"]).read_text() == "intact"
    assert (Path(params["victim_dir"]) / "file.txt").read_text() == "intact"
    assert not Path(params["victim"] + ".new").exists()
    assert not Path(params["host_tmp_marker"]).exists()
    assert not (Path(os.__file__).parent / "pwned_by_job.py").exists()


def test_a_job_cannot_read_what_an_earlier_job_left(host):
    params, _ = host
    stdin = json.dumps(params)
    with ExecutionPool(workers=1) as pool:
        writer, reader = pool.map([
            {"source": (HOSTILE / "other_job_writer.py").read_text(), "stdin": stdin,
             "files": {"input.csv": params["job_secret"]}},
            {"source": (HOSTILE / "other_job_reader.py").read_text()},
        ])  # fmt: skip
    assert writer.status == "passed" and writer.stdout.endswith("left secrets\n")
    assert reader.status == "passed", reader  # the scratch directories were unlocked again
    assert params["job_secret"] not in reader.stdout + reader.stderr
    assert "secret.txt" not in reader.stdout
    assert "SHARED MEMORY" not in reader.stdout


def test_sandbox_sees_only_system_and_python(host):
    params, _ = host
    probe = ("import json, os, sys\nP = json.loads(sys.stdin.read())\n"
             "print(json.dumps([sorted(os.listdir('/')), os.path.exists(P['secret_file']), os.getuid()]))")
    with ExecutionPool(workers=1) as pool:
        result = pool.run(probe, stdin=json.dumps(params))
    top, secret_visible, uid = json.loads(result.stdout)
    assert set(top) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev", "tmp"} | {
        Path(d).parts[1] for d in (sys.prefix, sys.base_prefix, str(SITE))}
    assert not secret_visible and uid != 0
