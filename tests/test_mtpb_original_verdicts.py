"""Differential test against the original MTPB checker (salesforce/CodeGen
codegen1/benchmark/mtpb_exec.py): whole programs scored through the real path (final-print
rewrite, sandboxed harness, check on the host), each with the verdict the original gives,
written down by hand from its source:

- try_rewrite_ast_with_print: a last statement that is not a `print...(...)` call gets its
  value wrapped in print (an assignment too); code that does not parse runs as written.
- eval_problem/do_exec: the program's `print` records its arguments; any Exception (its 20 s
  time-out included) ends the program quietly; the first argument of the LAST print is then
  checked, as it is at that moment.
- reliability_guard: exit/quit, os.kill, os.remove, os.putenv, subprocess.Popen, ... are None;
  joblib (and so scikit-learn) cannot be imported.
- check_equivalence: Series -> numpy (expected too); list with a tuple first -> lists;
  numpy uint8/int16/int32/int64, float16/32/64, bool_ -> Python; ndarray -> list; on a type
  mismatch an expected bool compares as strings, else the output is cast to the expected type;
  str/int/set/list/bool/tuple by ==, float within 1e-6, ndarray by allclose, other types fail.

The programs that hang run with a 2 s time limit, the others with the real 20 s (they end long
before it); only verdicts are asserted, never durations.
"""

from __future__ import annotations

import pytest

from opencodegen.evaluation.mtpb.run import SCORE_PRELOAD
from opencodegen.evaluation.mtpb.scoring import score_programs
from opencodegen.execution import ExecutionPool
from opencodegen.synthesis.history import PREFIX

PASS, FAIL = True, False
SHORT_LIMIT = 2.0

# (name, program after the MTPB prefix, expected output, the original's verdict)
CASES = [
    # -- the final-print rewrite
    ("last expression is printed", "x = 5\nx", 5, PASS),
    ("last assignment's value is printed", "x = [1, 2]", [1, 2], PASS),
    ("last call is printed", "def f():\n    return 3\nf()", 3, PASS),
    ("an earlier print loses to the rewritten last statement", "print(4)\nx = 5", 4, FAIL),
    ("a last call named print* is not rewritten", "print_it = len\nprint(7)\nprint_it('ab')", 7, PASS),
    ("a helper that prints is wrapped: print(None) comes last", "def show(v):\n    print(v)\nshow(9)", 9, FAIL),
    ("builtins.print is not recorded, print(None) is", "import builtins\nbuiltins.print(5)", 5, FAIL),
    ("a last for loop is left alone: no print", "for i in range(3):\n    pass", 2, FAIL),
    ("a last for loop after a print", "print(1)\nfor i in range(3):\n    pass", 1, PASS),
    ("x += 2 becomes x += print(2), then TypeError", "x = 1\nx += 2", 2, PASS),
    ("code that does not parse", "print(1", 1, FAIL),
    ("if __name__ == '__main__' runs", "if __name__ == '__main__':\n    print(6)", 6, PASS),
    ("annotations are evaluated (no __future__ leaks in)", "def f(x: int):\n    pass\nf.__annotations__['x'] is int",
     True, PASS),
    # -- which print counts
    ("print() last: no first argument", "print(1)\nprint()", 1, FAIL),
    ("the first of several arguments", "print(1, 2)", 1, PASS),
    ("a print to stderr is recorded", "import sys\nprint(3, file=sys.stderr)", 3, PASS),
    ("the printed object as it is at the end", "x = [1]\nprint(x)\nfor _ in range(1):\n    x.append(2)", [1, 2], PASS),
    ("...not as it was when printed", "x = [1]\nprint(x)\nfor _ in range(1):\n    x.append(2)", [1], FAIL),
    ("print_stack is a global the program can rebind", "print_stack = [{'args': (5,)}]\nfor _ in []:\n    pass",
     5, PASS),
    # -- exceptions and the time limit
    ("an exception after the print", "print(5)\nraise ValueError('late')", 5, PASS),
    ("an exception before the print", "raise ValueError('early')\nprint(5)", 5, FAIL),
    ("an exception whose str() raises escapes do_exec", "class E(Exception):\n    def __str__(self):\n"
     "        raise TypeError\nprint(5)\nraise E()", 5, FAIL),
    ("a NameError in the next print's argument", "print(5)\nprint(undefined_name)", 5, PASS),
    ("str() raises inside print: the call was recorded", "class A:\n    def __str__(self):\n        raise ValueError\n"
     "    def __int__(self):\n        return 5\nprint(A())", 5, PASS),
    ("prints, then hangs past the time limit", "print(5)\nwhile True:\n    pass", 5, PASS),
    ("prints, then sleeps past the time limit", "import time\nprint(5)\ntime.sleep(60)", 5, PASS),
    ("prints a wrong value, then hangs", "print(4)\nwhile True:\n    pass", 5, FAIL),
    ("hangs before printing", "while True:\n    pass\nprint(5)", 5, FAIL),
    ("catches its time-out and prints", "print(4)\ntry:\n    while True:\n        pass\nexcept Exception:\n"
     "    print(5)", 5, PASS),
    # -- the guard
    ("exit() is None: TypeError after the print", "print(5)\nexit()", 5, PASS),
    ("os.remove is None", "import os\nos.remove('f')\nprint(5)", 5, FAIL),
    ("os.putenv is None: setting os.environ raises", "import os\nos.environ['A'] = '1'\nprint(5)", 5, FAIL),
    ("subprocess.Popen is None", "import subprocess\nsubprocess.run(['true'])\nprint(5)", 5, FAIL),
    ("scikit-learn needs joblib, which is blocked", "from sklearn.linear_model import LinearRegression\nprint(5)", 5, FAIL),
    ("os.kill is None: TypeError after the print", "print(5)\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 5, PASS),
    # -- coercions of check_equivalence
    ("numpy int64 -> int", "print(np.int64(3))", 3, PASS),
    ("numpy int8 is not listed: cast by int()", "print(np.int8(3))", 3, PASS),
    ("numpy float32 -> float, within 1e-6", "print(np.float32(0.1))", 0.1, PASS),
    ("numpy float32 -> float before the str cast", "print(np.float32(0.1))", "0.1", FAIL),
    ("numpy bool_ -> bool", "print(np.bool_(True))", True, PASS),
    ("ndarray -> nested lists", "print(np.array([[1, 2], [3, 4]]))", [[1, 2], [3, 4]], PASS),
    ("ndarray -> list compared exactly", "print(np.array([0.1, 0.2]) + 1e-9)", [0.1, 0.2], FAIL),
    ("object ndarray -> list", "import pandas as pd\nprint(pd.Series(['x', 'y']).values)", ["x", "y"], PASS),
    ("list of numpy scalars compares by ==", "print([np.int64(1), np.int64(2)])", [1, 2], PASS),
    ("Series -> allclose", "import pandas as pd\nprint(pd.Series([1.0, 2.000001]))", [1, 2], PASS),
    ("Series of one value vs a number", "import pandas as pd\nprint(pd.Series([5]))", 5, PASS),
    ("Series of strings: allclose raises", "import pandas as pd\nprint(pd.Series(['a', 'b']))", ["a", "b"], FAIL),
    ("list(DataFrame) is its column names", "import pandas as pd\nprint(pd.DataFrame({'a': [1]}))", ["a"], PASS),
    ("list of tuples -> list of lists", "print([(1, 2), (3, 4)])", [[1, 2], [3, 4]], PASS),
    ("only a tuple FIRST makes lists", "print([[1, 2], (3, 4)])", [[1, 2], [3, 4]], FAIL),
    # -- type mismatches and the type rule
    ("tuple cast to the expected list", "print((1, 2))", [1, 2], PASS),
    ("str cast to a list of characters", "print('abc')", ["a", "b", "c"], PASS),
    ("set cast to a list", "print({3, 1, 2})", [1, 2, 3], PASS),
    ("a lazy map cast to a list", "print(map(int, ['1', '2']))", [1, 2], PASS),
    ("list cast to the expected str", "print([1, 2])", "[1, 2]", PASS),
    ("range cast to str", "print(range(3))", "range(0, 3)", PASS),
    ("float truncated by int()", "print(2.9)", 2, PASS),
    ("str cast to int", "print('3')", 3, PASS),
    ("int() of a word raises", "print('x')", 3, FAIL),
    ("bool cast to int", "print(True)", 1, PASS),
    ("int cast to float", "print(3)", 3.0000001, PASS),
    ("floats within 1e-6", "print(0.1 + 0.2)", 0.3, PASS),
    ("str cast to float", "print('2.5')", 2.5, PASS),
    ("an expected set compares by == (JSON data has none)", "print({2, 1})", {1, 2}, PASS),
    ("an expected tuple: the list is cast (JSON data has none)", "print([1, 2])", (1, 2), PASS),
    ("floats 2e-6 apart", "print(1.000002)", 1.0, FAIL),
    ("expected bool: 'True' as strings", "print('True')", True, PASS),
    ("expected bool: 1 is not 'True'", "print(1)", True, FAIL),
    ("expected bool: 'true' is not 'True'", "print('true')", True, FAIL),
    ("dict outputs always fail (problem 89)", "print({'1': ['a', 'b', 'c']})", {"1": ["a", "b", "c"]}, FAIL),
    ("a Counter is cast to dict: fails", "from collections import Counter\nprint(Counter('aab'))", {"a": 2, "b": 1}, FAIL),
    ("None outputs always fail (problem 41)", "print(None)", None, FAIL),
    ("a value against an expected None", "print(0)", None, FAIL),
]


HANGS = {"prints, then hangs past the time limit", "prints, then sleeps past the time limit",
         "prints a wrong value, then hangs", "hangs before printing", "catches its time-out and prints"}


@pytest.fixture(scope="module")
def verdicts():
    found = {}
    with ExecutionPool(workers=2, preload=SCORE_PRELOAD) as pool:
        for hangs, limit in ((False, 20.0), (True, SHORT_LIMIT)):
            cases = [case for case in CASES if (case[0] in HANGS) == hangs]
            scores = score_programs([(PREFIX + code, expected) for _, code, expected, _ in cases], pool,
                                    time_limit=limit)
            found.update(zip((name for name, *_ in cases), scores))
    return found


def test_cases_are_many_and_named_once():
    names = [name for name, *_ in CASES]
    assert len(names) == len(set(names)) >= 40 and HANGS <= set(names)
    assert {verdict for *_, verdict in CASES} == {PASS, FAIL}


@pytest.mark.parametrize("name, code, expected, verdict", CASES, ids=[c[0] for c in CASES])
def test_verdict_equals_the_original(verdicts, name, code, expected, verdict):
    score = verdicts[name]
    assert score.passed is verdict, score


def test_statuses_say_why(verdicts):
    assert verdicts["prints a wrong value, then hangs"].status == "timeout"
    assert verdicts["hangs before printing"].status == "timeout"
    assert verdicts["prints, then hangs past the time limit"].error.startswith("TimeLimitReached")
    assert verdicts["code that does not parse"].status == "syntax_error"
    assert verdicts["print() last: no first argument"].status == "no_print"
    assert verdicts["dict outputs always fail (problem 89)"].status == "wrong"


def test_where_the_original_gives_no_verdict_the_program_fails():
    """sys.exit() ends the original's whole run (SystemExit escapes do_exec and eval_problem); a
    program that catches its time-out and goes on forever hangs it. Both fail here."""
    programs = {
        "exits after the print": "print(5)\nimport sys\nsys.exit(0)",
        "swallows its time-out forever": "print(5)\nwhile True:\n    try:\n        while True:\n            pass\n"
        "    except Exception:\n        pass",
    }
    with ExecutionPool(workers=2) as pool:
        scores = score_programs([(code, 5) for code in programs.values()], pool, time_limit=SHORT_LIMIT)
    exits, forever = scores
    assert not exits.passed and exits.status == "aborted"
    assert not forever.passed and forever.status == "timeout"
