"""Benchmark figures as JSON-lines records: one per measurement, with when, where and on which commit.

Every benchmark script appends its figures to `benchmarks/results/<benchmark>.jsonl` (or the file
given by `--json-out`); `scripts/benchmarks_table.py` turns those files into the tables of
benchmarks/README.md. A record (FIELDS lists what each field holds):

    {"benchmark": "bench_load", "setting": {"preset": "codegen-350M-mono"}, "metric": "load time",
     "value": 2.2, "unit": "s", "statistic": "one run", "reference": "transformers",
     "reference_value": 3.1, "ratio": 1.41, "date": "2026-12-07T10:58Z", "commit": "86c554b+dirty",
     "machine": {"cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0+cpu", "load": 2.1}, "command": "python ..."}
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
UNKNOWN = "unknown"

REQUIRED = {
    "benchmark": "the script's name without .py",
    "setting": "an object of what was held fixed (shape, n, dtype, threads ...): names to strings or numbers",
    "metric": "what was measured",
    "value": "our figure, a finite number",
    "unit": "the value's unit ('' for a count)",
    "date": "UTC, ISO 8601 (YYYY-MM-DD or YYYY-MM-DDTHH:MMZ), or 'unknown'",
    "commit": "short git commit, '+dirty' when the tree had changes, or 'unknown'",
    "machine": "an object with 'cpu', 'cores' and 'torch' (each may be 'unknown'), 'gpu' when one was used, and "
               "'load', the 1-minute load average when the figures were written (other tenants' work)",
}
OPTIONAL = {
    "statistic": "what the value is over (best of 3 rounds, median of 15 rounds, lowest of 9 runs ...)",
    "reference": "what the value is compared with",
    "reference_value": "the reference's figure in the same unit (needs 'reference')",
    "ratio": "how many times better ours is than the reference (> 1: ours better; needs 'reference')",
    "command": "the command line that measured it",
    "note": "a short remark the table shows beside the figure",
    "source": "where a record not written by its script came from",
}
FIELDS = {**REQUIRED, **OPTIONAL}
MACHINE_KEYS = ("cpu", "cores", "torch", "gpu", "load")


def problem(record: Any) -> tuple[str, str] | None:
    """The first thing wrong with `record` as (field, what is wrong), or None when it is well formed."""
    if not isinstance(record, dict):
        return "record", "expected a JSON object"
    for field in record:
        if field not in FIELDS:
            return field, f"unknown field (the fields: {', '.join(FIELDS)})"
    for field in REQUIRED:
        if field not in record:
            return field, f"missing ({REQUIRED[field]})"
    for field in ("benchmark", "metric", "unit", "date", "commit", *(f for f in OPTIONAL if f in record)):
        if field not in ("reference_value", "ratio") and not isinstance(record[field], str):
            return field, f"expected a string, got {record[field]!r:.60}"
    for field in ("value", "reference_value", "ratio"):
        if field in record and not is_number(record[field]):
            return field, f"expected a finite number, got {record[field]!r:.60}"
    for field in ("benchmark", "metric"):
        if not record[field].strip():
            return field, "empty"
    if ("reference_value" in record or "ratio" in record) and "reference" not in record:
        return "reference", "missing: 'reference_value' and 'ratio' need to say what they compare with"
    date = record["date"]
    if date != UNKNOWN and not valid_date(date):
        return "date", f"expected YYYY-MM-DD, YYYY-MM-DDTHH:MMZ or 'unknown', got {date!r:.60}"
    setting = record["setting"]
    if not isinstance(setting, dict) or not all(isinstance(v, str) or is_number(v) for v in setting.values()):
        return "setting", f"expected an object of strings and numbers, got {setting!r:.60}"
    machine = record["machine"]
    if not isinstance(machine, dict):
        return "machine", f"expected an object, got {machine!r:.60}"
    for key in machine:
        if key not in MACHINE_KEYS:
            return f"machine.{key}", f"unknown key (the keys: {', '.join(MACHINE_KEYS)})"
    for key in MACHINE_KEYS[:3]:
        if key not in machine:
            return f"machine.{key}", "missing (write 'unknown' when it is not known)"
    for key, value in machine.items():
        if not (is_number(value) if key == "load" else isinstance(value, str) or is_number(value)):
            return f"machine.{key}", f"expected {'a number' if key == 'load' else 'a string or a number'}, got {value!r:.60}"
    return None


def over(how: str, count: int, noun: str) -> str:
    """A statistic's wording: 'best of 3 rounds', or 'one round' when there was only one."""
    return f"one {noun}" if count == 1 else f"{how} of {count} {noun}s"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def valid_date(text: str) -> bool:
    for layout in ("%Y-%m-%d", "%Y-%m-%dT%H:%MZ"):
        try:
            datetime.datetime.strptime(text, layout)
            return True
        except ValueError:
            pass
    return False


def commit() -> str:
    """HEAD's short hash, with '+dirty' when tracked files differ from it (results/ aside: data, not code)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                  ".", ":(exclude)benchmarks/results"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN
    return head + ("+dirty" if changes else "")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def machine(gpu: str | None = None) -> dict[str, Any]:
    """The CPU model, its cores, torch's version (read without importing torch), the GPU when one was used
    and the load average (on a shared machine, how much else was running)."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = UNKNOWN
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count() or UNKNOWN, "torch": torch_version}
    if gpu:
        info["gpu"] = gpu
    if hasattr(os, "getloadavg"):
        info["load"] = round(os.getloadavg()[0], 1)
    return info


def add_json_out(parser: Any, benchmark: str) -> None:
    """The `--json-out` option every benchmark script takes."""
    default = RESULTS / f"{benchmark}.jsonl"
    parser.add_argument("--json-out", type=Path, default=default,
                        help=f"append the figures as JSON lines here (default: {default.relative_to(ROOT)}; "
                             "scripts/benchmarks_table.py makes benchmarks/README.md's tables from that folder)")


class Recorder:
    """Collects one run's figures and appends them, stamped with date, commit, machine and command."""

    def __init__(self, benchmark: str, path: Path, gpu: str | None = None) -> None:
        self.benchmark, self.path, self.gpu = benchmark, Path(path), gpu
        self.records: list[dict[str, Any]] = []

    def add(self, metric: str, value: float, unit: str, setting: dict[str, Any] | None = None, *,
            statistic: str | None = None, reference: str | None = None, reference_value: float | None = None,
            ratio: float | None = None, note: str | None = None) -> None:
        record: dict[str, Any] = {"benchmark": self.benchmark, "setting": setting or {}, "metric": metric,
                                  "value": value, "unit": unit}
        optional = {"statistic": statistic, "reference": reference, "reference_value": reference_value,
                    "ratio": ratio, "note": note}
        record.update({k: v for k, v in optional.items() if v is not None})
        self.records.append(record)

    def write(self) -> None:
        """Append every record (validated) to the file; called once, after the run's measurements."""
        stamp = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                 "commit": commit(), "machine": machine(self.gpu),
                 "command": shlex.join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])}
        lines = []
        for record in self.records:
            record = {**record, **stamp}
            wrong = problem(record)
            if wrong:
                raise ValueError(f"{self.benchmark}: field {wrong[0]!r}: {wrong[1]}")
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(lines)
        print(f"appended {len(lines)} records to {self.path}")
