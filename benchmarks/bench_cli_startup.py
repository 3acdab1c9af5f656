"""Start-up time of `opencodegen --help` (and `eval humaneval --help`) against a bare `python -c pass`.

Each round runs every command once, interleaved, so that the machine's drift hits all alike; it
prints the median wall time of each over the rounds and the help's cost above the bare interpreter.
`import torch` is shown for scale: what building the parsers no longer pays.

    python benchmarks/bench_cli_startup.py --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from records import Recorder, add_json_out, over

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "opencodegen --help": [sys.executable, "-m", "opencodegen", "--help"],
    "opencodegen eval humaneval --help": [sys.executable, "-m", "opencodegen", "eval", "humaneval", "--help"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds (default: 15)")
    add_json_out(parser, "bench_cli_startup")
    args = parser.parse_args()
    for command in COMMANDS.values():  # warm the page cache and the bytecode caches
        wall(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            times[name].append(wall(command))
    bare = statistics.median(times["python -c pass"])
    recorder = Recorder("bench_cli_startup", args.json_out)
    statistic = over("median", args.rounds, "round")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<36} median {median * 1000:7.1f} ms  (+{(median - bare) * 1000:6.1f} ms over python -c pass; "
              f"min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}; {args.rounds} rounds)")
        recorder.add("wall time", round(median * 1000, 1), "ms", {"command": name}, statistic=statistic)
        if name != "python -c pass":
            recorder.add("above python -c pass", round((median - bare) * 1000, 1), "ms", {"command": name},
                         statistic=statistic)
    recorder.write()


if __name__ == "__main__":
    main()
