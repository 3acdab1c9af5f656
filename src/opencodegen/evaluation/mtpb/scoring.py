"""MTPB scoring with the verdicts of CodeGen's checker, every program run in the sandbox.

The rules are those of salesforce/CodeGen codegen1/benchmark/mtpb_exec.py (`eval_problem`,
`do_exec`, `time_limit`, `check_equivalence`, `try_rewrite_ast_with_print`):

1. If the last top-level statement is not a `print...(...)` call, its value is wrapped in
   `print(...)` (including the quirk that `x = f()` becomes `x = print(f())`).
2. The program runs in the sandbox under `harness.py`, which mirrors how the original runs
   it (its guard, its recording `print`, its 20 s limit whose time-out is swallowed like any
   Exception) and reports the first argument of the LAST print, after the checker's coercions.
3. The report is rebuilt here from plain JSON and the check is finished: a type mismatch casts
   the output to the expected type (an expected bool compares as strings), then str/int/set/
   list/bool/tuple compare by ==, float within 1e-6, ndarray by allclose, and any other type
   (dict, None, ...) fails.
"""

from __future__ import annotations

import ast
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opencodegen.evaluation.mtpb.data import Problem

HARNESS_SOURCE = Path(__file__).with_name("harness.py").read_text(encoding="utf-8")
CHECKER_SOURCE = "salesforce/CodeGen codegen1/benchmark/mtpb_exec.py"
CHECKER_VERSION = 2  # of our rules; stored with every result, so results of other rules are never mixed
TIME_LIMIT_S = 20.0  # the original's time limit per program (a time-out its do_exec swallows)
GRACE_S = 5.0  # after the limit: time for the harness to report; a program still running then is killed
MEMORY_MB = 4096  # numpy + pandas fit with room to spare
OUTPUT_LIMIT = 4 << 20  # the report (value + casts) stays well under this; the program's own stdout is capped apart
ARRAY_KINDS = "biufU"
COMPARED_TYPES = (str, int, set, list, bool, tuple)  # by ==; float within 1e-6, ndarray by allclose, others fail


@dataclass(frozen=True)
class Score:
    """The verdict on one program: passed, and why not (status), with what it printed."""

    passed: bool
    # passed | wrong | no_print | syntax_error | timeout | aborted | memory | crashed | no_report
    status: str
    output: str | None = None  # str() of the captured object, shortened
    error: str | None = None
    stdout: str = ""

    def to_record(self) -> dict[str, Any]:
        return {"passed": self.passed, "status": self.status, "output": self.output, "error": self.error,
                "stdout": self.stdout[:1000]}


# ---------------------------------------------------------------------------------------------
# 1. AST rewrite


def add_final_print(code: str) -> str:
    """Wrap the value of the last top-level statement in `print(...)` unless it already prints.

    Raises SyntaxError (or ValueError for NUL bytes) when the code does not parse.
    """
    tree = ast.parse(code)
    if not tree.body:
        return code
    last = tree.body[-1]
    value = getattr(last, "value", None)
    if not isinstance(value, ast.expr):
        return code  # for/if/def/... have no value to print: left as is, like the original
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id.startswith("print"):
        return code
    last.value = ast.Call(func=ast.Name(id="print", ctx=ast.Load()), args=[value], keywords=[])  # type: ignore[attr-defined]
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


# ---------------------------------------------------------------------------------------------
# 2. Running in the sandbox


def execution_job(program: str, time_limit: float = TIME_LIMIT_S) -> tuple[dict[str, Any] | None, str | Score]:
    """The run_program keyword arguments for a program and the nonce of its report.

    When the program does not parse, returns (None, the failing Score) instead.
    """
    try:
        rewritten = add_final_print(program)
    except (SyntaxError, ValueError) as exc:
        return None, Score(False, "syntax_error", error=f"{type(exc).__name__}: {exc}"[:500])
    except (RecursionError, MemoryError):
        rewritten = program  # the original runs the program as written when its rewrite fails
    nonce = secrets.token_hex(16)
    job = {
        "source": HARNESS_SOURCE,
        "stdin": json.dumps({"nonce": nonce, "program": rewritten, "time_limit": time_limit}),
        "timeout": time_limit + GRACE_S,
        "memory_mb": MEMORY_MB,
        "output_limit": OUTPUT_LIMIT,
    }
    return job, nonce


def judge(result: Any, nonce: str, expected: Any) -> Score:
    """Score one ExecutionResult of a job made by `execution_job`."""
    report = read_report(result.stdout, nonce)
    if report is None:  # killed: it ran past its time limit plus GRACE_S, or out of memory
        status = result.status if result.status in ("timeout", "memory", "crashed") else "no_report"
        if status == "timeout":
            return Score(False, status, error=f"still running {GRACE_S:g} s after its time limit: killed")
        return Score(False, status, error=(result.stderr or "")[-500:] or None)
    stdout, error = str(report.get("stdout", "")), report.get("error")
    error = str(error) if error is not None else None
    timed_out = error is not None and error.startswith("TimeLimitReached")
    if report.get("aborted"):  # SystemExit & co.: the original's whole run would stop here
        return Score(False, "aborted", error=error, stdout=stdout)
    if not report.get("printed"):
        return Score(False, "timeout" if timed_out else "no_print", error=error, stdout=stdout)
    if "coerce_error" in report:
        return Score(False, "wrong", output=f"<coercion failed: {report['coerce_error']}>", error=error, stdout=stdout)
    try:
        value = decode(report["value"])
        casts = decode_casts(report.get("casts", {}))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        return Score(False, "wrong", output=f"<unreadable report: {exc}>", error=error, stdout=stdout)
    passed = check_equivalence(value, expected, casts, series=report.get("series") is True)
    status = "passed" if passed else "timeout" if timed_out else "wrong"
    return Score(passed, status, output=_short(value), error=error, stdout=stdout)


def read_report(stdout: str, nonce: str) -> dict[str, Any] | None:
    """The harness's report: the JSON between the last two `\\n<nonce>\\n` markers."""
    marker = f"\n{nonce}\n"
    end = stdout.rfind(marker)
    start = stdout.rfind(marker, 0, end) if end > 0 else -1
    if start < 0:
        return None
    try:
        report = json.loads(stdout[start + len(marker) : end])
    except (json.JSONDecodeError, RecursionError):
        return None
    return report if isinstance(report, dict) else None


def score_programs(
    items: Sequence[tuple[str, Any]],
    pool: Any = None,
    progress: Callable[[int], None] | None = None,
    time_limit: float = TIME_LIMIT_S,
) -> list[Score]:
    """Score (program, expected output) pairs in sandboxes, results in input order.

    `pool` is an opencodegen.execution.ExecutionPool (one is made for this call when None);
    `time_limit` is the original's 20 s unless a test needs it shorter.
    """
    if pool is None:
        from opencodegen.execution import ExecutionPool

        with ExecutionPool() as own:
            return score_programs(items, own, progress, time_limit)
    prepared = [execution_job(program, time_limit) for program, _ in items]
    results = iter(pool.map([job for job, _ in prepared if job is not None]))
    scores: list[Score] = []
    for (job, nonce_or_score), (_, expected) in zip(prepared, items):
        if job is None:
            assert isinstance(nonce_or_score, Score)
            scores.append(nonce_or_score)
        else:
            scores.append(judge(next(results), str(nonce_or_score), expected))
        if progress is not None:
            progress(1)
    return scores


def checker_warnings(problems: Iterable[Problem]) -> list[str]:
    """What the original's rules make impossible in these problems, one line per problem.

    Expected outputs of a type its check_equivalence rejects (dict, None) fail whatever is
    printed; programs that import scikit-learn fail under its reliability_guard.
    """
    notes = []
    for problem in problems:
        rejected: dict[str, list[str]] = {}
        for test in problem.tests:
            kind = type(problem.expected(test))
            if kind not in (*COMPARED_TYPES, float):
                rejected.setdefault("None" if kind is type(None) else kind.__name__, []).append(str(test))
        for kind, tests in rejected.items():
            notes.append(
                f"problem {problem.id}: {len(tests)} test case(s) ({', '.join(tests)}) expect {kind}, a type the "
                "original checker rejects: no program can pass them under its rules (followed here)"
            )
        if any("sklearn" in prompt for prompt in problem.prompts):
            notes.append(
                f"problem {problem.id}: its prompts use scikit-learn, which cannot be imported under the "
                "original's reliability_guard (its import sets os.environ, whose putenv the guard removed, and "
                "it needs joblib, which the guard blocks): programs that follow the prompts fail"
            )
    return notes


# ---------------------------------------------------------------------------------------------
# 3. Rebuilding the printed object and comparing it


class Opaque:
    """An object the harness could not carry over (a DataFrame, a custom class, ...)."""

    def __init__(self, type_name: str, text: str | None):
        self.type_name, self.text = type_name, text

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return hash((self.type_name, self.text))

    def __str__(self) -> str:
        return self.text if self.text is not None else f"<{self.type_name}>"


# Stand-ins for subclasses of builtin types (namedtuple, Counter, IntEnum, ...): they compare
# like their base but keep `type(x) != base`, which the checker's branches look at.
_SUBCLASS = {base: type(f"{base.__name__}_subclass", (base,), {}) for base in (int, float, str, list, tuple, set, frozenset, dict)}
_BASES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "tuple": tuple,
          "set": set, "frozenset": frozenset, "dict": dict}


def decode(node: Any) -> Any:
    """Rebuild an object from the harness's tagged JSON (never runs code chosen by the program)."""
    if not isinstance(node, dict) or not isinstance(node.get("t"), str):
        raise ValueError(f"bad node {node!r:.80}")
    tag = node["t"]
    if tag == "None":
        return None
    if tag in ("int", "float", "str", "bool"):
        base = _BASES[tag]
        value = node["v"]
        if type(value) is not base and not (base is float and type(value) is int):
            raise ValueError(f"bad {tag} value")
        return _SUBCLASS[base](value) if node.get("sub") and base is not bool else base(value)
    if tag in ("list", "tuple", "set", "frozenset"):
        base = _BASES[tag]
        items = [decode(item) for item in _list(node["v"])]
        return (_SUBCLASS[base] if node.get("sub") else base)(items)
    if tag == "dict":
        pairs = [(decode(k), decode(v)) for k, v in (_list(pair) for pair in _list(node["v"]))]
        return (_SUBCLASS[dict] if node.get("sub") else dict)(pairs)
    if tag == "ndarray":
        shape = tuple(int(n) for n in _list(node["shape"]))
        items = [decode(item) for item in _list(node["v"])]
        if str(node["dtype"]) == "|O":  # item by item: np.array would turn nested lists into dimensions
            array = np.empty(len(items), dtype=object)
            for index, item in enumerate(items):
                array[index] = item
            return array.reshape(shape)
        return np.array(items, dtype=_dtype(node["dtype"])).reshape(shape)
    if tag == "numpy":
        return _dtype(node["dtype"]).type(decode(node["v"]))
    if tag == "opaque":
        text = node.get("str")
        return Opaque(str(node.get("type")), text if isinstance(text, str) else None)
    if tag in ("too_large", "unreadable"):
        return Opaque(f"<{tag}>", None)
    raise ValueError(f"unknown tag {tag!r:.40}")


def decode_casts(casts: Any) -> dict[str, Any]:
    """The str/int/float/list casts the harness computed on the live object."""
    if not isinstance(casts, dict):
        raise ValueError("bad casts")
    out: dict[str, Any] = {}
    for name, kind in (("str", str), ("int", int), ("float", float)):
        if name in casts:
            value = casts[name]
            if type(value) is not kind and not (kind is float and type(value) is int):
                raise ValueError(f"bad {name} cast")
            out[name] = kind(value)
    if "list" in casts:
        out["list"] = decode(casts["list"])
    return out


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return value


def _dtype(text: Any) -> np.dtype[Any]:
    try:
        dtype = np.dtype(str(text)[:16])
    except TypeError:
        raise ValueError(f"bad dtype {text!r:.20}") from None
    if dtype.kind not in ARRAY_KINDS or dtype.itemsize > 1 << 16:  # e.g. '<U999999999' would eat memory
        raise ValueError(f"dtype {dtype} not allowed")
    return dtype


_CASTS = {str: "str", int: "int", float: "float", list: "list"}  # computed on the live object


def check_equivalence(output: Any, expected: Any, casts: dict[str, Any] | None = None, series: bool = False) -> bool:
    """The rest of the original's check_equivalence, on the harness's coerced output.

    `series`: the printed object was a pandas Series (`output` is its numpy array), so the
    expected value becomes an array too. If the types differ: an expected bool compares as
    strings, otherwise the output is cast to the expected type (str/int/float/list casts come
    from `casts`, made on the live object in the sandbox). Then str/int/set/list/bool/tuple
    compare by ==, float within 1e-6, ndarray by allclose; any other type (dict, None, ...)
    fails, as does a check that raises.
    """
    try:
        return _check(output, expected, casts or {}, series)
    except Exception:
        return False


def _check(o1: Any, o2: Any, casts: dict[str, Any], series: bool) -> bool:
    if series:
        o2 = np.array(o2)
    if type(o1) is not type(o2):
        if type(o2) is bool:
            o1, o2 = casts["str"], str(o2)  # KeyError: the cast failed in the sandbox -> fail
        elif type(o2) in _CASTS:
            o1 = casts[_CASTS[type(o2)]]
        else:
            o1 = type(o2)(o1)
    if type(o1) in COMPARED_TYPES:
        return bool(o1 == o2)
    if type(o1) is float:
        return bool(abs(o1 - o2) < 1e-6)
    if type(o1) is np.ndarray:
        return bool(np.allclose(o1, o2))
    return False  # the original raises "Unsupported type": the test fails


def _short(value: Any, limit: int = 300) -> str:
    try:
        text = str(value)
    except Exception as exc:
        text = f"<str() failed: {exc}>"
    return text if len(text) <= limit else text[:limit] + "..."

