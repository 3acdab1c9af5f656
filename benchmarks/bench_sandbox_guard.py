"""Cost of watching a sandboxed job's memory: the old check (proportional set size of every
process, from /proc/<pid>/smaps_rollup, every 50 ms) against the current one (resident sizes from
/proc/<pid>/statm, PSS only when they add up to more than the limit, every 100 ms for an
interactive job), side by side on the same process tree, and the CPU a live, idle session
interpreter's guard really uses.

    python3 benchmarks/bench_sandbox_guard.py [--children 4] [--mb 100] [--checks 500] [--idle 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from opencodegen.execution import _server
from opencodegen.synthesis.interpreter import Interpreter


def per_check_seconds(check, checks: int) -> float:
    start = time.perf_counter()
    for _ in range(checks):
        check()
    return (time.perf_counter() - start) / checks


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def guard_pid(interpreter: Interpreter) -> int:
    """The guard: the process itself without a sandbox, else bubblewrap's child."""
    pid = interpreter.process.pid
    if not interpreter.process.isolation.sandboxed:
        return pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return int(f.read().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=4, help="processes in the watched tree (default: 4)")
    parser.add_argument("--mb", type=int, default=100, help="memory each one touches (default: 100)")
    parser.add_argument("--checks", type=int, default=500, help="checks timed per method (default: 500)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds to watch an idle interpreter (default: 5)")
    args = parser.parse_args()

    children = []
    for _ in range(args.children):
        pid = os.fork()
        if pid == 0:
            block = bytearray(args.mb << 20)
            block[::4096] = b"x" * len(block[::4096])
            signal.pause()
        children.append(pid)
    time.sleep(1.0)  # let them touch their memory
    limit = 2048 << 20
    try:
        old = per_check_seconds(lambda: _server.resident_bytes(_server.job_processes(False)) > limit, args.checks)
        new = per_check_seconds(lambda: _server.over_memory(_server.job_processes(False), limit), args.checks)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    print(f"one check of {args.children} processes x {args.mb} MB: old {old * 1e6:.0f} us, new {new * 1e6:.0f} us "
          f"({old / new:.1f}x cheaper)")
    print(f"CPU share at the poll rate: old (every {_server.MEMORY_POLL_S * 1e3:.0f} ms) "
          f"{old / _server.MEMORY_POLL_S:.2%}, new (every {_server.GUARD_POLL_S * 1e3:.0f} ms) "
          f"{new / _server.GUARD_POLL_S:.2%}")

    with Interpreter() as interpreter:
        interpreter.run("import numpy as np\nxs = np.arange(1_000_000)")
        guard = guard_pid(interpreter)
        before, start = cpu_seconds(guard), time.monotonic()
        time.sleep(args.idle)
        used = cpu_seconds(guard) - before
        mode = interpreter.process.isolation.mode
    print(f"idle session guard ({mode}): {used:.2f} CPU s in {time.monotonic() - start:.1f} s "
          f"= {used / args.idle:.2%} of one CPU")


if __name__ == "__main__":
    main()
