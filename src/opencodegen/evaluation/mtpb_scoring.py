"""MTPB scoring as the reference does it, with every program run in the sandbox.

1. If the last top-level statement is not a `print...(...)` call, its value is wrapped in
   `print(...)` (the reference's AST rewrite, including its quirk that `x = f()` becomes
   `x = print(f())`).
2. The program runs in the sandbox under `mtpb_harness.py`, which reports the first argument
   of the LAST print executed (an exception after that print does not matter).
3. The report is rebuilt here from plain JSON and compared with the expected output by the
   reference's type-coercing check (`check_equivalence`).
"""

from __future__ import annotations

import ast
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HARNESS_SOURCE = Path(__file__).with_name("mtpb_harness.py").read_text(encoding="utf-8")
TIMEOUT_S = 20.0  # the reference's time limit per program
MEMORY_MB = 4096  # numpy + pandas + scikit-learn fit with room to spare
OUTPUT_LIMIT = 4 << 20  # the report (value + casts) stays well under this; the program's own stdout is capped apart
ARRAY_KINDS = "biufU"


@dataclass(frozen=True)
class Score:
    """The verdict on one program: passed, and why not (status), with what it printed."""

    passed: bool
    status: str  # passed | wrong | no_print | syntax_error | timeout | memory | crashed | no_report
    output: str | None = None  # str() of the captured object, shortened
    error: str | None = None
    stdout: str = ""

    def to_record(self) -> dict[str, Any]:
        return {"passed": self.passed, "status": self.status, "output": self.output, "error": self.error,
                "stdout": self.stdout[:1000]}  # fmt: skip


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
        return code  # for/if/def/... have no value to print: left as is, like the reference
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id.startswith("print"):
        return code
    last.value = ast.Call(func=ast.Name(id="print", ctx=ast.Load()), args=[value], keywords=[])  # type: ignore[attr-defined]
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


# ---------------------------------------------------------------------------------------------
# 2. Running in the sandbox


def execution_job(program: str, timeout: float = TIMEOUT_S) -> tuple[dict[str, Any] | None, str | Score]:
    """The run_program keyword arguments for a program and the nonce of its report.

    When the program does not parse, returns (None, the failing Score) instead.
    """
    try:
        rewritten = add_final_print(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return None, Score(False, "syntax_error", error=f"{type(exc).__name__}: {exc}"[:500])
    nonce = secrets.token_hex(16)
    job = {
        "source": HARNESS_SOURCE,
        "stdin": json.dumps({"nonce": nonce, "program": rewritten}),
        "timeout": timeout,
        "memory_mb": MEMORY_MB,
        "output_limit": OUTPUT_LIMIT,
    }
    return job, nonce


def judge(result: Any, nonce: str, expected: Any) -> Score:
    """Score one ExecutionResult of a job made by `execution_job`."""
    report = read_report(result.stdout, nonce)
    if report is None:
        status = result.status if result.status in ("timeout", "memory", "crashed") else "no_report"
        return Score(False, status, error=(result.stderr or "")[-500:] or None)
    stdout, error = str(report.get("stdout", "")), report.get("error")
    error = str(error) if error is not None else None
    if not report.get("printed"):
        return Score(False, "no_print", error=error, stdout=stdout)
    try:
        value = decode(report["value"])
        casts = decode_casts(report.get("casts", {}))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        return Score(False, "wrong", output=f"<unreadable report: {exc}>", error=error, stdout=stdout)
    passed = check_equivalence(value, expected, casts)
    return Score(passed, "passed" if passed else "wrong", output=_short(value), error=error, stdout=stdout)


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
    timeout: float = TIMEOUT_S,
) -> list[Score]:
    """Score (program, expected output) pairs in sandboxes, results in input order.

    `pool` is an opencodegen.execution.ExecutionPool (one is made for this call when None).
    """
    if pool is None:
        from opencodegen.execution import ExecutionPool

        with ExecutionPool() as own:
            return score_programs(items, own, progress, timeout)
    prepared = [execution_job(program, timeout) for program, _ in items]
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


def score_program(program: str, expected: Any) -> Score:
    """Score one program (one sandbox run)."""
    return score_programs([(program, expected)])[0]


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
          "set": set, "frozenset": frozenset, "dict": dict}  # fmt: skip


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
        dtype = _dtype(node["dtype"])
        shape = tuple(int(n) for n in _list(node["shape"]))
        return np.array([decode(item) for item in _list(node["v"])], dtype=dtype).reshape(shape)
    if tag == "numpy":
        return _dtype(node["dtype"]).type(decode(node["v"]))
    if tag == "Series":
        import pandas

        return pandas.Series(decode(node["v"]))
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


_NP_INTS = (np.uint8, np.int16, np.int32, np.int64)
_NP_FLOATS = (np.float16, np.float32, np.float64)
_CASTABLE = {str: "str", int: "int", float: "float", list: "list"}


def check_equivalence(output: Any, expected: Any, casts: dict[str, Any] | None = None) -> bool:
    """The reference's check of the printed object against the expected output.

    Coercions (in this order, only the first that applies): pandas Series -> numpy (and the
    expected value too); list whose first item is a tuple -> list of lists; numpy uint8/int16/
    int32/int64 -> int; float16/32/64 -> float; bool_ -> bool; ndarray -> list. If the types
    still differ: an expected bool compares as strings, otherwise the output is cast to the
    expected type (`casts` holds casts computed on the live object, used when no coercion
    applied). Floats pass within 1e-6, numpy arrays by allclose, everything else by ==.
    A check that raises is a failure.
    """
    try:
        return _check(output, expected, casts)
    except Exception:
        return False


def _check(o1: Any, o2: Any, casts: dict[str, Any] | None) -> bool:
    coerced = True
    if _is_series(o1):
        o1, o2 = o1.to_numpy(), np.array(o2)
    elif type(o1) is list and o1 and type(o1[0]) is tuple:
        o1 = [list(t) for t in o1]
    elif type(o1) in _NP_INTS:
        o1 = int(o1)
    elif type(o1) in _NP_FLOATS:
        o1 = float(o1)
    elif type(o1) is np.bool_:
        o1 = bool(o1)
    elif type(o1) is np.ndarray:
        o1 = o1.tolist()
    else:
        coerced = False
    if type(o1) is not type(o2):
        live = casts if casts is not None and not coerced else None
        if type(o2) is bool:
            o1, o2 = (live["str"] if live is not None else str(o1)), str(o2)
        elif live is not None and type(o2) in _CASTABLE:
            o1 = live[_CASTABLE[type(o2)]]  # KeyError: the cast failed in the sandbox -> fail
        else:
            o1 = type(o2)(o1)
    if type(o1) is float:
        return abs(o1 - o2) < 1e-6
    if type(o1) is np.ndarray:
        return bool(np.allclose(o1, o2))
    return bool(o1 == o2)


def _is_series(value: Any) -> bool:
    return type(value).__module__.startswith("pandas") and type(value).__name__ == "Series"


def _short(value: Any, limit: int = 300) -> str:
    try:
        text = str(value)
    except Exception as exc:
        text = f"<str() failed: {exc}>"
    return text if len(text) <= limit else text[:limit] + "..."

