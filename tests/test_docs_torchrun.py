"""The torchrun command of docs/evaluation.md, as written, on 2 CPU processes and a tiny model:
torchrun must accept every flag (it parses the whole line) and the ranks must write the results."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from generation_helpers import make_model_dir

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "evaluation.md"


def documented_torchrun_command() -> list[str]:
    """The first `torchrun ...` command of the doc's bash blocks, continuation lines joined."""
    text = DOC.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("torchrun ")]
    assert lines, f"{DOC} shows no torchrun command"
    return shlex.split(lines[0])


def with_values(argv: list[str], values: dict[str, list[str]]) -> list[str]:
    """`argv` with the values of the given flags replaced (each flag must be in `argv`)."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in values:
            out.extend(values[argv[i]])
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                i += 1
            continue
        i += 1
    missing = [flag for flag in values if flag not in argv]
    assert not missing, f"the documented command lacks {missing}"
    return out


def test_documented_torchrun_command_runs_two_cpu_ranks(tmp_path):
    documented = documented_torchrun_command()
    assert documented[:1] == ["torchrun"] and "--n" not in documented
    model = make_model_dir(tmp_path / "model")
    out = tmp_path / "out"
    argv = with_values(documented[1:], {"--nproc-per-node": ["2"], "--model": [str(model)], "--out": [str(out)],
                                        "--num-samples": ["2"], "--temperature": ["0.5", "0.9"],
                                        "--dtype": ["float32"]})
    argv += ["--limit", "2", "--max-new-tokens", "4", "--k", "1", "2", "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    if shutil.which("bwrap") is None:  # no sandbox on this machine: the explicit, recorded opt-out
        env["OPENCODEGEN_ISOLATION"] = "none"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ambiguous option" not in proc.stderr
    for rank in (0, 1):
        assert (out / f"rank{rank}.done").is_file() and (out / f"results.rank{rank}.jsonl").is_file()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2 * 2 and {s["task_id"] for s in samples} == {"HumanEval/0", "HumanEval/1"}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"0.5", "0.9"} and set(summary["best"]) == {"pass@1", "pass@2"}
    assert json.loads((out / "run.json").read_text())["world"] == 2
