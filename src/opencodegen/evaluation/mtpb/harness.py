"""Runs ONE MTPB program inside the sandbox the way CodeGen's mtpb_exec.py runs it.

This file is the source given to the sandbox (the evaluator imports it only for `describe` and
`encode`, in tests). It reads `{"nonce", "program", "time_limit"}` from stdin and mirrors the
original's run of a program (codegen1/benchmark/mtpb_exec.py: `reliability_guard`,
`overload_builtin_print`, `do_exec`, `time_limit`, the first steps of `check_equivalence`):

- the functions and modules that `reliability_guard` sets to None are None here too (so
  `exit()`, `os.remove(...)` or setting `os.environ` raise TypeError, and scikit-learn cannot be
  imported: it sets os.environ and needs joblib, which the guard blocks);
- `print` is a global of the program that records its arguments in `print_stack` and calls
  `builtins.print`;
- after `time_limit` seconds (wall clock, fired once) a TimeLimitReached, an Exception, is raised
  in the program; like any Exception it ends the program quietly, and the last print counts;
- the first argument of the last print is read after the program ended (so later changes to
  that object count), and coerced as `check_equivalence` does before it looks at the expected
  output: pandas Series -> its numpy array, list with a tuple first -> list of lists, numpy
  scalars of the listed types -> Python scalars, ndarray -> list.

At the end it writes one block to the original stdout:

    \\n<nonce>\\n<json report>\\n<nonce>\\n

The report holds the coerced object in a tagged JSON form (never pickle: the evaluator must not
run code chosen by the program) plus its str/int/float/list casts computed here, where the
object lives. The expected output never enters the sandbox, so a program that forges a report
gains nothing it could not get by printing a value.
"""

from __future__ import annotations

import builtins
import io
import itertools
import json
import os
import signal
import sys
from typing import Any

MAX_NODES = 20_000
MAX_STR = 20_000
MAX_INT_BITS = 13_000  # json.dumps refuses ints over 4300 digits
MAX_DEPTH = 60
STDOUT_KEEP = 4_000
SIMPLE = {bool: "bool", int: "int", float: "float", str: "str"}
SEQUENCES = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}
ARRAY_KINDS = "biufU"  # numpy dtypes carried as values; object arrays item by item; others opaque

# What mtpb_exec.py's reliability_guard sets to None (attributes of os, shutil, subprocess,
# builtins) and which modules it makes unimportable.
GUARDED = {
    "os": ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
           "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
           "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"),
    "shutil": ("rmtree", "move", "chown"),
    "subprocess": ("Popen",),
    "builtins": ("exit", "quit"),
}
BLOCKED_MODULES = ("ipdb", "joblib", "resource", "tkinter")


class TooLarge(Exception):
    """The object is too big to report (it could not equal an MTPB expected output)."""


class TimeLimitReached(Exception):  # noqa: N818 - named for what happened, like the original's
    """Raised in the program when its time is up; an Exception, so `except Exception` catches it."""


class Budget:
    def __init__(self, nodes: int = MAX_NODES):
        self.left = nodes

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise TooLarge


# ----------------------------------------------------------------------------- transport


def encode(x: Any, budget: Budget | None = None, depth: int = 0) -> dict[str, Any]:
    """A JSON-able tagged description of `x` that the evaluator can rebuild without running code."""
    budget = budget or Budget()
    budget.take()
    if depth > MAX_DEPTH:
        raise TooLarge
    kind = type(x)
    if x is None:
        return {"t": "None"}
    numpy = sys.modules.get("numpy")
    if numpy is not None and kind is numpy.ndarray and x.dtype.kind in ARRAY_KINDS + "O":
        flat = [encode(item, budget, depth + 1) for item in x.ravel().tolist()]
        return {"t": "ndarray", "dtype": x.dtype.str, "shape": list(x.shape), "v": flat}
    if numpy is not None and isinstance(x, numpy.generic) and x.dtype.kind in ARRAY_KINDS:
        return {"t": "numpy", "dtype": x.dtype.str, "v": encode(x.item(), budget, depth + 1)}
    for base, tag in SIMPLE.items():
        if isinstance(x, base):
            value = base(x) if kind is not base else x
            if tag == "str" and len(value) > MAX_STR or tag == "int" and value.bit_length() > MAX_INT_BITS:
                raise TooLarge
            return _tagged(tag, value, kind is not base)
    for base, tag in SEQUENCES.items():
        if isinstance(x, base):
            return _tagged(tag, [encode(item, budget, depth + 1) for item in x], kind is not base)
    if isinstance(x, dict):
        items = [[encode(k, budget, depth + 1), encode(v, budget, depth + 1)] for k, v in x.items()]
        return _tagged("dict", items, kind is not dict)
    return {"t": "opaque", "type": f"{kind.__module__}.{kind.__qualname__}", "str": _safe_str(x)}


def _tagged(tag: str, value: Any, subclass: bool) -> dict[str, Any]:
    node = {"t": tag, "v": value}
    if subclass:
        node["sub"] = True
    return node


def _safe_str(x: Any) -> str | None:
    try:
        text = str(x)
    except Exception:
        return None
    return text if len(text) <= MAX_STR else None


def casts(x: Any) -> dict[str, Any]:
    """str/int/float/list of `x`, the casts the checker may need; a failing cast is left out.

    A list cast longer than MAX_NODES items is left out too (it cannot equal an expected list).
    """
    out: dict[str, Any] = {}
    for name, cast in (("str", str), ("int", int), ("float", float), ("list", _bounded_list)):
        try:
            value = cast(x)
            out[name] = encode(value) if name == "list" else encode(value)["v"]
        except Exception:  # the cast raises in the original too: that comparison fails
            continue
    return out


def _bounded_list(x: Any) -> list[Any]:
    items = list(itertools.islice(iter(x), MAX_NODES + 1))
    if len(items) > MAX_NODES:
        raise TooLarge
    return items


# ----------------------------------------------------------------------------- the checker's first steps


def coerce(x: Any) -> tuple[bool, Any]:
    """(is a pandas Series, x after check_equivalence's coercions), on the live object.

    Only the first rule that applies is used, in the original's order; may raise (a failure).
    """
    kind = type(x)
    pandas = sys.modules.get("pandas")
    # The original tests str(type(x)) == "<class 'pandas.core.series.Series'>", the name pandas
    # 1.x gave the class; pandas 3 names it <class 'pandas.Series'>, so the class itself is tested.
    if pandas is not None and kind is pandas.Series:
        return True, x.to_numpy()
    if kind is list:
        return False, [list(t) for t in x] if len(x) > 0 and type(x[0]) is tuple else x
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return False, x
    if kind in (numpy.uint8, numpy.int16, numpy.int32, numpy.int64):
        return False, int(x)
    if kind in (numpy.float16, numpy.float32, numpy.float64):
        return False, float(x)
    if kind is numpy.bool_:
        return False, bool(x)
    if kind is numpy.ndarray:
        return False, x.tolist()
    return False, x


def describe(x: Any) -> dict[str, Any]:
    """The report entries for the printed object `x`: series flag, coerced value and its casts."""
    try:
        series, value = coerce(x)
    except Exception as exc:
        return {"coerce_error": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        node = encode(value)
    except TooLarge:
        node = {"t": "too_large"}
    except Exception as exc:  # a hostile object that breaks inspection
        node = {"t": "unreadable", "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"series": series, "value": node, "casts": casts(value)}


# ----------------------------------------------------------------------------- running the program


def guard_like_the_original() -> None:
    """Set to None what mtpb_exec.py's reliability_guard sets to None, block the same modules."""
    for module_name, names in GUARDED.items():
        module = builtins if module_name == "builtins" else __import__(module_name)
        for name in names:
            setattr(module, name, None)
    for name in BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]


def _time_is_up(signum: int, frame: Any) -> None:
    raise TimeLimitReached("Timed out!")


class BoundedText(io.StringIO):
    """A stdout replacement that keeps only the first STDOUT_KEEP characters."""

    def write(self, text: str) -> int:
        room = STDOUT_KEEP - self.tell()
        if room > 0:
            super().write(text[:room])
        return len(text)


def program_namespace() -> dict[str, Any]:
    """Globals of the program: `__main__`, `builtins`, `print_stack` and the recording `print`."""
    namespace: dict[str, Any] = {"__name__": "__main__", "print_stack": [], "builtins": builtins}

    def print(*args: Any, **kwargs: Any) -> None:  # globals looked up at call time, as upstream
        namespace["print_stack"].append({"args": args, "kwargs": kwargs})
        return namespace["builtins"].print(*args, **kwargs)

    namespace["print"] = print
    return namespace


def run(program: str, time_limit: float) -> dict[str, Any]:
    """Run `program` under the time limit; the report of its last print (see the module doc)."""
    namespace = program_namespace()
    guard_like_the_original()
    sys.stdout = buffer = BoundedText()
    error, aborted = None, False
    signal.signal(signal.SIGALRM, _time_is_up)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        try:
            exec(compile(program, "<program>", "exec", dont_inherit=True), namespace)  # no __future__ of ours
        except Exception as exc:  # swallowed by the original's do_exec, its time-out included
            error = f"{type(exc).__name__}: {exc}"[:1000]
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: they stop the original's whole run
            error, aborted = f"{type(exc).__name__}: {exc}"[:1000], True
        report: dict[str, Any] = {"error": error, "aborted": aborted, "stdout": buffer.getvalue()}
        try:
            printed = namespace["print_stack"][-1]["args"][0]
        except Exception:
            return {**report, "printed": False}
        return {**report, "printed": True, **describe(printed)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    request = json.loads(sys.stdin.read())
    sys.stdin = io.StringIO()
    nonce, program, time_limit = str(request["nonce"]), str(request["program"]), float(request["time_limit"])
    del request
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    try:
        report = run(program, time_limit)
    except TimeLimitReached:  # time ran out inside this harness's own code: the original fails it too
        report = {"error": "TimeLimitReached: while reading the last print", "printed": False}
    except Exception as exc:  # e.g. str() of the program's exception raised: the original fails it too
        report = {"error": f"the harness failed: {type(exc).__name__}", "printed": False}
    try:
        text = json.dumps(report)
    except Exception:  # e.g. a str subclass whose methods were tampered with
        text = json.dumps({"error": report.get("error"), "printed": False, "unreadable": True})
    channel.write(f"\n{nonce}\n{text}\n{nonce}\n")
    channel.flush()


if __name__ == "__main__":
    main()
