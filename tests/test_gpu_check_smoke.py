"""benchmarks/gpu_check.py, the one script of issue 22's GPU Must-show, runs end to end on the CPU in
its --smoke mode: every check passes, every throughput setting and the grid report their figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_gpu_check_smoke_on_cpu(tmp_path):
    summary_file = tmp_path / "summary.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--device", "cpu",
                           "--budget-s", "3600", "--json", str(summary_file),
                           "--json-out", str(tmp_path / "records.jsonl")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    assert summary["passed"] and not summary["skipped"]
    assert {c["check"] for c in summary["checks"]} >= {"greedy-fp32", "greedy-eager-fp32", "greedy-eager-bf16"}
    assert [(t["shape"], t["n"]) for t in summary["throughput"]] == [("base", 3), ("base", 2), ("demo", 3), ("demo", 2)]
    fields = {"benchmark", "setting", "metric", "value", "unit", "statistic", "reference", "reference_value", "ratio",
              "date", "commit", "machine", "command", "note"}  # benchmarks/records.py's
    for setting in summary["throughput"]:
        metrics = {r["metric"]: r for r in setting["records"]}
        for metric in ("tokens/s", "samples/s", "wall time"):
            record = metrics[metric]
            assert min(record["value"], record["reference_value"], record["ratio"]) > 0
            assert record["reference"].startswith("transformers generate")
        wall, samples = metrics["wall time"], metrics["samples/s"]
        assert samples["ratio"] == pytest.approx(wall["ratio"])  # both sides drew the same samples in each round
        assert metrics["decode bound at our batch"]["value"] > 0
        assert all(set(r) <= fields and r["setting"]["shape"] == setting["shape"] and r["benchmark"] ==
                   "bench_eval_throughput" for r in setting["records"])
    [grid] = summary["grid"]
    assert grid["measured"] and grid["samples"] == 2 * 3 * 2 and grid["problems_done"] == 2
    assert "GOAL" in proc.stdout and "PASS greedy-eager-bf16" in proc.stdout
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from records import problem

    written = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [problem(r) for r in written] == [None] * len(written)  # stamped and valid for the tables
    assert sum(r["benchmark"] == "bench_eval_throughput" for r in written) == sum(len(t["records"]) for t in summary["throughput"])
