"""The reference's type-coercing equivalence check, one test per rule, and the harness's
object transport (encode in the sandbox -> JSON -> decode on the host)."""

from __future__ import annotations

import json
from collections import Counter, namedtuple
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from mtpb_helpers import mtpb_path
from opencodegen.evaluation import mtpb_harness as harness
from opencodegen.evaluation.mtpb import load_mtpb
from opencodegen.evaluation.mtpb_scoring import (
    Opaque,
    add_final_print,
    check_equivalence,
    decode,
    decode_casts,
)


def carried(value):
    """(object, casts) as the host sees them after the harness reported `value`."""
    report = json.loads(json.dumps({"value": harness.encode(value), "casts": harness.casts(value)}))
    return decode(report["value"]), decode_casts(report["casts"])


def check(value, expected):
    """check_equivalence on the object as it arrives from the sandbox."""
    obj, casts = carried(value)
    return check_equivalence(obj, expected, casts)


# ------------------------------------------------------------------ the rules, one by one


def test_rule_series_becomes_numpy_and_compares_with_allclose():
    assert check(pd.Series([1.0, 2.0000000001]), [1, 2])
    assert not check(pd.Series([1.0, 2.5]), [1, 2])
    assert not check(pd.Series(["a", "b"]), ["a", "b"])  # allclose on strings raises: fails as upstream
    assert isinstance(carried(pd.Series([1, 2]))[0], pd.Series)


def test_rule_list_of_tuples_becomes_list_of_lists():
    assert check([(1, 2), (3, 4)], [[1, 2], [3, 4]])
    assert not check([[1, 2], (3, 4)], [[1, 2], [3, 4]])  # only when the FIRST item is a tuple
    Point = namedtuple("Point", "x y")
    assert not check([Point(1, 2)], [[1, 2]])  # a namedtuple is not exactly a tuple upstream either


def test_rule_numpy_integers_become_int():
    for kind in (np.uint8, np.int16, np.int32, np.int64):
        assert check(kind(7), 7) and check(kind(7), 7.0) and not check(kind(7), 8)
    assert type(carried(np.int16(7))[0]) is np.int16


def test_rule_numpy_floats_become_float_before_any_cast():
    assert check(np.float64(0.1) + np.float64(0.2), 0.3)
    assert check(np.float32(0.5), "0.5")
    # float(np.float32(0.1)) = 0.10000000149011612: the rule applies before the str cast
    assert not check(np.float32(0.1), "0.1")


def test_rule_numpy_bool_becomes_bool():
    assert check(np.bool_(True), True) and not check(np.bool_(False), True)


def test_rule_ndarray_becomes_list_compared_exactly():
    assert check(np.array([[1, 2], [3, 4]]), [[1, 2], [3, 4]])
    assert check(np.array([0.1, 0.2]), [0.1, 0.2])
    assert not check(np.array([0.1, 0.2]), [0.1, 0.2000001])  # lists compare by ==, no tolerance
    assert check(np.array(["a", "b"]), ["a", "b"])


def test_rule_expected_bool_compares_as_strings():
    assert check("True", True) and check("False", False)
    assert not check(1, True)  # "1" != "True" (bool(1) would have passed)
    assert not check("False", True)  # bool("False") is True: exactly what the rule avoids


def test_rule_output_cast_to_expected_type():
    assert check("5", 5)
    assert check(2.7, 2)  # int(2.7) == 2: the reference's cast truncates
    assert check((1, 2), [1, 2])
    assert check("abc", ["a", "b", "c"])
    assert check(3, "3")
    assert check(Fraction(1, 2), 0.5)  # a cast computed on the live object in the sandbox
    assert check(range(3), [0, 1, 2])
    assert check(Counter(a=1), {"a": 1})
    assert not check("x", 3)  # int("x") raises: a failure, not a crash


def test_rule_floats_within_1e_minus_6():
    assert check(0.1 + 0.2, 0.3)
    assert check(1, 1.0000001)
    assert not check(1.000002, 1.0)


def test_rule_other_types_by_equality():
    assert check(None, None) and not check(0, None)
    assert check({"1": ["a"]}, {"1": ["a"]}) and not check({1: ["a"]}, {"1": ["a"]})
    assert check(["a", 1], ["a", 1]) and not check([1.0, 2.0], [1.0, 2.0000001])


def test_live_casts_keep_set_order_and_unreadable_objects_fail():
    assert check({3, 1, 2}, "{1, 2, 3}")
    df = pd.DataFrame({"a": [1]})
    assert isinstance(carried(df)[0], Opaque)
    assert check(df, str(df)) and not check(df, 1)
    assert not check_equivalence(Opaque("x.Y", None), "anything", {})


# ------------------------------------------------------------------ transport and rewrite


@pytest.mark.parametrize(
    "value",
    [None, True, 3, -2.5, float("inf"), "s\u00e9", [1, [2, (3,)]], {"k": {1, 2}}, frozenset({1}),
     np.int8(-3), np.float16(1.5), np.str_("ab"), np.array([[1.5, 2.0]], dtype=np.float32),
     np.array([True, False]), np.array(3)],
)  # fmt: skip
def test_values_survive_the_transport_with_their_types(value):
    obj, _ = carried(value)
    assert type(obj) is type(value)
    if isinstance(value, np.ndarray):
        assert obj.dtype == value.dtype and obj.shape == value.shape and (obj == value).all()
    else:
        assert obj == value or (value != value and obj != obj)


def test_transport_limits_and_bad_reports():
    with pytest.raises(harness.TooLarge):
        harness.encode(list(range(harness.MAX_NODES + 1)))
    with pytest.raises(harness.TooLarge):
        harness.encode("x" * (harness.MAX_STR + 1))
    deep: list = []
    deep.append(deep)
    with pytest.raises(harness.TooLarge):
        harness.encode(deep)
    huge = {"t": "ndarray", "dtype": "<U99999999", "shape": [1], "v": [{"t": "str", "v": "a"}]}
    for bad in [{"t": "int", "v": "1"}, {"t": "eval", "v": "1"}, {"t": "numpy", "dtype": "O", "v": {"t": "int", "v": 1}},
                [], huge, {**huge, "dtype": "<U999999999"}]:  # fmt: skip
        with pytest.raises(ValueError):
            decode(bad)


@pytest.mark.parametrize(
    "code, rewritten",
    [
        ("def f(a):\n    return a ** 2\nf(2)", "def f(a):\n    return a ** 2\nprint(f(2))"),
        ("print(f(2))", "print(f(2))"),
        ("print_result(x)", "print_result(x)"),  # any name starting with print counts
        ("x = 5", "x = print(5)"),  # the reference wraps an assignment's value too
        ("x = print(5)", "x = print(5)"),
        ("for i in range(3):\n    pass", "for i in range(3):\n    pass"),
        ("obj.print()", "print(obj.print())"),
        ("", ""),
    ],
)
def test_final_print_rewrite(code, rewritten):
    assert add_final_print(code) == rewritten


def test_rewrite_rejects_broken_code():
    with pytest.raises(SyntaxError):
        add_final_print("def f(:")


def test_every_expected_output_of_mtpb_passes_against_itself_after_transport():
    bench = load_mtpb(mtpb_path())
    for problem in bench.problems:
        for test in problem.tests:
            expected = problem.expected(test)
            assert check(expected, expected), (problem.id, test)
