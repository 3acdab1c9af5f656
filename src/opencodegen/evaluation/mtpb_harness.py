"""Runs ONE MTPB program inside the sandbox and reports the first argument of its last print.

This file is the source given to the sandbox (it is not imported by the evaluator except to
test `encode`). It reads `{"nonce": ..., "program": ...}` from stdin, runs the program with a
`print` that remembers its arguments (as the reference checker does), sends the program's own
stdout to a bounded buffer, and at the end writes one block to the original stdout:

    \\n<nonce>\\n<json report>\\n<nonce>\\n

The report holds the last printed object in a tagged JSON form (never pickle: the evaluator
must not run code chosen by the program) plus its str/int/float/list casts computed here,
where the object lives. The expected output never enters the sandbox, so a program that forges
a report gains nothing it could not get by printing a value.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import sys
from typing import Any

MAX_NODES = 20_000
MAX_STR = 20_000
MAX_INT_BITS = 13_000  # json.dumps refuses ints over 4300 digits
MAX_DEPTH = 60
STDOUT_KEEP = 4_000
SIMPLE = {bool: "bool", int: "int", float: "float", str: "str"}
SEQUENCES = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}
ARRAY_KINDS = "biufU"  # numpy dtypes carried as values; others become opaque


class TooLarge(Exception):
    """The object is too big to report (it could not equal an MTPB expected output)."""


class Budget:
    def __init__(self, nodes: int = MAX_NODES):
        self.left = nodes

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise TooLarge


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
    if numpy is not None and kind is numpy.ndarray and x.dtype.kind in ARRAY_KINDS:
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
    pandas = sys.modules.get("pandas")
    if pandas is not None and kind is pandas.Series:
        return {"t": "Series", "v": encode(x.to_numpy(), budget, depth + 1)}
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
    """str/int/float/list of `x`, as the checker would cast it; a failing cast is left out."""
    out: dict[str, Any] = {}
    for name, cast in (("str", str), ("int", int), ("float", float), ("list", list)):
        try:
            value = cast(x)
            out[name] = encode(value) if name == "list" else encode(value)["v"]
        except Exception:  # the cast raises in the reference too: that comparison fails
            continue
    return out


class BoundedText(io.StringIO):
    """A stdout replacement that keeps only the first STDOUT_KEEP characters."""

    def write(self, text: str) -> int:
        room = STDOUT_KEEP - self.tell()
        if room > 0:
            super().write(text[:room])
        return len(text)


def run(program: str) -> dict[str, Any]:
    last: list[tuple[Any, ...]] = []

    def print(*args: Any, **kwargs: Any) -> None:  # the program's print, as in the reference
        last[:] = [args]
        builtins.print(*args, **kwargs)

    namespace = {"__name__": "__main__", "__builtins__": builtins, "print": print}
    sys.stdout = buffer = BoundedText()
    error = None
    try:
        exec(compile(program, "<program>", "exec"), namespace)
    except BaseException as exc:  # an exception after the last print does not fail
        error = f"{type(exc).__name__}: {exc}"[:1000]
    report: dict[str, Any] = {"error": error, "stdout": buffer.getvalue(), "printed": bool(last and last[0])}
    if report["printed"]:
        value = last[0][0]
        try:
            report["value"] = encode(value)
            report["casts"] = casts(value)
        except TooLarge:
            report["value"] = {"t": "too_large"}
        except Exception as exc:  # a hostile object that breaks inspection
            report["value"] = {"t": "unreadable", "error": f"{type(exc).__name__}: {exc}"[:300]}
    return report


def main() -> None:
    request = json.loads(sys.stdin.read())
    sys.stdin = io.StringIO()
    nonce, program = str(request["nonce"]), str(request["program"])
    del request
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    report = run(program)
    try:
        text = json.dumps(report)
    except Exception:  # e.g. a str subclass whose methods were tampered with
        text = json.dumps({"error": report.get("error"), "printed": report["printed"], "value": {"t": "unreadable"}})
    channel.write(f"\n{nonce}\n{text}\n{nonce}\n")
    channel.flush()


if __name__ == "__main__":
    main()
