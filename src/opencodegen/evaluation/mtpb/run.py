"""The resumable MTPB pipeline: generate programs, score them in the sandbox, summarize.

Files under OUT:
  samples_<mode>.jsonl   generated programs, one per (id, test, sample)
  results_<mode>.jsonl   their scores (passed, status, captured output, error)
  summary.json           pass_rate (%), per_problem, per_category, per_turns (+ every mode)
  mtpb_categories.png    pass rate per category, multi- vs single-turn
  config.json            the settings a resumed run must match (model, weights sha256, dtype,
                         device, every sampler setting, isolation mode, package versions: see
                         run_record)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from opencodegen.errors import DataError
from opencodegen.evaluation import run_record
from opencodegen.evaluation.mtpb.data import SINGLE_TURN_NOTE, Benchmark, Problem
from opencodegen.evaluation.mtpb.generate import GENERATORS
from opencodegen.evaluation.mtpb.report import plot_comparison, summarize
from opencodegen.evaluation.mtpb.scoring import (
    CHECKER_SOURCE,
    CHECKER_VERSION,
    TIME_LIMIT_S,
    checker_warnings,
    score_programs,
)
from opencodegen.evaluation.protocols import Protocol
from opencodegen.io import ResultStore, read_jsonl

KEY = ("id", "test", "sample")
SCORE_CHUNK = 32  # programs scored between two appends to the results file
SCORE_PRELOAD = ("numpy", "pandas")  # imported once per sandbox worker, not once per program
WINDOW_BATCHES = 4  # problems are generated together until their samples fill this many running batches


def _key(record: dict[str, Any]) -> tuple[str, int, int]:
    return record["id"], record["test"], record["sample"]


def check_config(out: Path, config: dict[str, Any]) -> None:
    """Remember the run's settings; refuse to resume into OUT with different ones, naming them."""
    run_record.check_record(out / "config.json", config, error=DataError)


def generate(
    problems: Sequence[Problem], generator: Any, params: Any, mode: str, out: Path, protocol: Protocol | None = None
) -> list[dict[str, Any]]:
    """Generated programs of `mode` for `problems` (texts handled as `protocol` says), resuming
    from OUT/samples_<mode>.jsonl. Problems lacking samples are generated a window at a time
    (`windows`), whose records are written when the window is done."""
    store = ResultStore(out / f"samples_{mode}.jsonl", KEY)
    todo = [p for p in problems if not all((p.id, t, s) in store for t in p.tests for s in range(params.n))]
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=f"MTPB {mode}-turn generation",
               unit="problem")
    with bar:
        for window in windows(todo, params.n, WINDOW_BATCHES * getattr(generator, "max_batch_size", 1)):
            records = GENERATORS[mode](generator, window, params, protocol)
            store.extend(r for r in records if _key(r) not in store)
            bar.update(len(window))
    ids = {p.id for p in problems}
    return [r for r in store.records if r["id"] in ids]


def windows(problems: Sequence[Problem], n: int, rows: int) -> Iterator[list[Problem]]:
    """Runs of consecutive problems with at least `rows` samples of a turn together (the last may
    have fewer): enough work to keep the running batch full, little to lose to a kill."""
    window: list[Problem] = []
    for problem in problems:
        window.append(problem)
        if sum(len(p.tests) for p in window) * n >= rows:
            yield window
            window = []
    if window:
        yield window


def load_programs(path: str | Path, problems: dict[str, Problem]) -> list[dict[str, Any]]:
    """Rows {"id", "test", "program"} of a JSONL file; repeated (id, test) rows are samples."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"programs file not found: {path}")
    seen: Counter[tuple[str, int]] = Counter()
    rows = []
    for lineno, row in read_jsonl(path):
        try:
            pid, test, program = str(row["id"]), row["test"], row["program"]
        except KeyError:
            raise DataError(f'{path}:{lineno}: expected {{"id": ..., "test": 0-4, "program": "..."}}') from None
        if pid not in problems:
            raise DataError(f"{path}:{lineno}: unknown problem id {pid!r}")
        if not isinstance(test, int) or test not in problems[pid].tests:
            raise DataError(f"{path}:{lineno}: problem {pid} has no test case {test!r}")
        if not isinstance(program, str):
            raise DataError(f"{path}:{lineno}: program must be a string")
        rows.append({"mode": "programs", "id": pid, "test": test, "sample": seen[pid, test], "program": program})
        seen[pid, test] += 1
    if not rows:
        raise DataError(f"{path}: no programs")
    return rows


def score(
    samples: Iterable[dict[str, Any]],
    problems: dict[str, Problem],
    mode: str,
    out: Path,
    workers: int | None,
    isolation: str = "auto",
) -> list[dict[str, Any]]:
    """Scored records for `samples`, resuming from OUT/results_<mode>.jsonl; `isolation` as
    ExecutionPool's."""
    from opencodegen.execution import ExecutionPool

    samples = list(samples)
    store = ResultStore(out / f"results_{mode}.jsonl", KEY)
    stale = sum(r.get("checker") != CHECKER_VERSION for r in store.records)
    if stale:
        raise DataError(f"{store.path} holds {stale} results scored under other checker rules; delete that file "
                        f"to score its samples again under the current rules (version {CHECKER_VERSION})")
    todo = [s for s in samples if _key(s) not in store]
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"MTPB {mode} scoring", unit="prog")
    with bar, ExecutionPool(workers=workers, preload=SCORE_PRELOAD, isolation=isolation) as pool:
        for start in range(0, len(todo), SCORE_CHUNK):
            chunk = todo[start : start + SCORE_CHUNK]
            items = [(s["program"], problems[s["id"]].expected(s["test"])) for s in chunk]
            scores = score_programs(items, pool=pool, progress=bar.update)
            store.extend(
                {"id": s["id"], "test": s["test"], "sample": s["sample"], **sc.to_record(), "checker": CHECKER_VERSION,
                 "expected": problems[s["id"]].expected(s["test"]), "program": s["program"]}
                for s, sc in zip(chunk, scores)
            )
    keys = {_key(s) for s in samples}
    return [r for r in store.records if _key(r) in keys]


def write_summary(
    out: Path,
    benchmark: Benchmark,
    results: dict[str, list[dict[str, Any]]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json (the first mode's numbers at the top level, every mode under "modes") + PNG.

    "warnings" lists what the original checker's rules make impossible in the scored problems.
    """
    problems = benchmark.by_id()
    modes = {mode: summarize(records, problems) for mode, records in results.items()}
    scored = sorted({r["id"] for records in results.values() for r in records}, key=int)
    if "single" in modes:
        modes["single"]["note"] = SINGLE_TURN_NOTE
    primary = next(iter(modes))
    summary = {
        "benchmark": "MTPB",
        "mode": primary,
        **modes[primary],
        "modes": modes,
        "data": {"path": benchmark.source, "sha256": benchmark.sha256, "warnings": benchmark.warnings},
        "checker": {"rules": CHECKER_SOURCE, "version": CHECKER_VERSION, "time_limit_s": TIME_LIMIT_S},
        "warnings": checker_warnings(problems[pid] for pid in scored),
        **(extra or {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_comparison(modes, out / "mtpb_categories.png")
    return summary


def select(benchmark: Benchmark, ids: Sequence[str] | None, limit: int | None) -> list[Problem]:
    """The problems to run: the given ids (in benchmark order), then at most `limit` of them."""
    problems = benchmark.problems
    if ids:
        known = benchmark.by_id()
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise DataError(f"unknown MTPB problem id(s): {', '.join(unknown)}")
        problems = [p for p in problems if p.id in set(ids)]
    return problems[:limit] if limit is not None else problems

