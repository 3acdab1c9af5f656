"""The original checker's type-coercing equivalence check (mtpb_exec.py check_equivalence), one
test per rule, in process: coercion in the harness -> JSON -> the check on the host. Also the
harness's object transport and the final-print rewrite. Whole programs in the sandbox:
test_mtpb_original_verdicts.py."""

from __future__ import annotations

import json
from collections import Counter, namedtuple
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from mtpb_helpers import mtpb_path
from opencodegen.evaluation.mtpb import harness
from opencodegen.evaluation.mtpb.data import load_mtpb
from opencodegen.evaluation.mtpb.scoring import (
    Opaque,
    add_final_print,
    check_equivalence,
    checker_warnings,
    decode,
    decode_casts,
)


def carried(value):
    """(coerced object, casts, series flag) as the host sees them after the harness reported `value`."""
    report = json.loads(json.dumps(harness.describe(value)))
    return decode(report["value"]), decode_casts(report["casts"]), report["series"]


def check(value, expected):
    """The whole check of a printed `value`: coerced in the harness, finished on the host."""
    report = json.loads(json.dumps(harness.describe(value)))
    if "coerce_error" in report:
        return False
    return check_equivalence(decode(report["value"]), expected, decode_casts(report["casts"]), report["series"])


def transported(value):
    """`value` after the harness's encode -> JSON -> decode, without the checker's coercions."""
    return decode(json.loads(json.dumps(harness.encode(value))))


# ------------------------------------------------------------------ the rules, one by one


def test_rule_series_becomes_numpy_and_compares_with_allclose():
    assert check(pd.Series([1.0, 2.0000000001]), [1, 2])
    assert not check(pd.Series([1.0, 2.5]), [1, 2])
    assert not check(pd.Series(["a", "b"]), ["a", "b"])  # allclose on strings raises: fails as upstream
    assert check(pd.Series([5]), 5)  # allclose broadcasts: a one-item Series equals a scalar
    assert check(pd.Series([1, 0]), [True, False])
    assert check(pd.Series([1, "a"]).iloc[:1], [1])  # object dtype with numbers: allclose still works
    assert not check(pd.Series([1.0]), None)  # np.array(None) is an object array: allclose raises
    value, _, series = carried(pd.Series([1, 2]))
    assert series and isinstance(value, np.ndarray) and value.tolist() == [1, 2]


def test_rule_list_of_tuples_becomes_list_of_lists():
    assert check([(1, 2), (3, 4)], [[1, 2], [3, 4]])
    assert not check([[1, 2], (3, 4)], [[1, 2], [3, 4]])  # only when the FIRST item is a tuple
    Point = namedtuple("Point", "x y")
    assert not check([Point(1, 2)], [[1, 2]])  # a namedtuple is not exactly a tuple upstream either
    assert not check([(1, 2), 3], [[1, 2], [3]])  # list(3) raises: the check fails
    assert check([(1, 2), "ab"], [[1, 2], ["a", "b"]])  # ...but list("ab") does not


def test_rule_numpy_integers_become_int():
    for kind in (np.uint8, np.int16, np.int32, np.int64):
        assert check(kind(7), 7) and check(kind(7), 7.0) and not check(kind(7), 8)
    assert type(carried(np.int16(7))[0]) is int
    assert check(np.int8(7), 7) and not check(np.int8(1), True)  # int8 is not in the list: cast, then "1" != "True"


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
    assert check(True, 1)  # int(True) == 1
    assert check(map(str, [1, 2]), ["1", "2"])  # list() of the live iterator
    assert not check("x", 3)  # int("x") raises: a failure, not a crash


def test_rule_floats_within_1e_minus_6():
    assert check(0.1 + 0.2, 0.3)
    assert check(1, 1.0000001)
    assert not check(1.000002, 1.0)


def test_rule_types_outside_the_list_always_fail():
    # check_equivalence raises "Unsupported type" for any type but str/int/set/list/bool/tuple/float/ndarray
    assert not check(None, None) and not check(0, None)
    assert not check({"1": ["a"]}, {"1": ["a"]}) and not check(Counter(a=1), {"a": 1})
    assert not check([("1", ["a"])], {"1": ["a"]})  # dict() of the output works, the type rule still fails
    assert check(["a", 1], ["a", 1]) and not check([1.0, 2.0], [1.0, 2.0000001])
    assert check({1, 2}, [1, 2]) and check((1, 2), [1, 2])  # set and tuple are cast to the expected list


def test_live_casts_keep_set_order_and_unreadable_objects_fail():
    assert check({3, 1, 2}, "{1, 2, 3}")
    df = pd.DataFrame({"a": [1]})
    assert isinstance(carried(df)[0], Opaque) and isinstance(transported(object()), Opaque)
    assert check(df, str(df)) and not check(df, 1)
    assert not check_equivalence(Opaque("x.Y", None), "anything", {})


# ------------------------------------------------------------------ transport and rewrite


@pytest.mark.parametrize(
    "value",
    [None, True, 3, -2.5, float("inf"), "s\u00e9", [1, [2, (3,)]], {"k": {1, 2}}, frozenset({1}),
     np.int8(-3), np.float16(1.5), np.str_("ab"), np.array([[1.5, 2.0]], dtype=np.float32),
     np.array([True, False]), np.array(3)],
)
def test_values_survive_the_transport_with_their_types(value):
    obj = transported(value)
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
                [], huge, {**huge, "dtype": "<U999999999"}]:
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


def test_every_expected_output_of_mtpb_passes_against_itself_except_dicts_and_none():
    bench = load_mtpb(mtpb_path())
    failing = [(p.id, t) for p in bench.problems for t in p.tests if not check(p.expected(t), p.expected(t))]
    assert failing == [("41", 1), ("41", 4), ("89", 0), ("89", 1), ("89", 2), ("89", 3), ("89", 4)]
    warnings = checker_warnings(bench.problems)
    assert [w.split(":")[0] for w in warnings] == ["problem 14", "problem 41", "problem 46", "problem 89"]
    assert "2 test case(s) (1, 4) expect None" in warnings[1] and "5 test case(s) (0, 1, 2, 3, 4) expect dict" in warnings[3]
