"""Oracle programs: hand-written turn code for MTPB problems of every category, assembled in the
multi-turn format and scored in the sandbox. Correct ones pass every test case (4/5 where the
data itself is wrong); deliberately wrong variants fail. Also hostile programs cannot fake a pass.
"""

from __future__ import annotations

import pytest

from mtpb_helpers import mtpb_path
from opencodegen.evaluation.mtpb.data import load_mtpb
from opencodegen.evaluation.mtpb.run import SCORE_PRELOAD
from opencodegen.evaluation.mtpb.scoring import score_programs
from opencodegen.execution import ExecutionPool
from opencodegen.synthesis.history import build_program

# Turn code per problem: str.format templates filled with the test case's inputs ({{ }} = brace).
ORACLES: dict[str, list[str]] = {
    "1": ['my_string = "{A}"', "my_string = my_string.lower()", "chars = set(my_string)",
          "chars = sorted(chars)", "print(chars)"],
    "2": ["numbers = {numbers}", "total = sum(numbers)", "normalized = [x / total * 100 for x in numbers]",
          'formatted = [f"{{x:.1f}}" for x in normalized]', "print(formatted)"],
    "3": ["def minutes_to_seconds(m):\n    return m * 60", "def hours_to_seconds(h):\n    return h * 3600",
          "print(hours_to_seconds({a1}) + minutes_to_seconds({a2}))"],
    "5": ["my_numbers = {A}", "n_neg = sum(1 for x in my_numbers if x < 0)",
          "n_pos = sum(1 for x in my_numbers if x > 0)", "print(max(n_neg, n_pos))"],
    "6": ["import pandas as pd", 'df = pd.DataFrame({{"Yes": [{a1}, {a2}], "No": [{a3}, {a4}]}})',
          "means = df.mean()", "print(means)"],
    "7": ['def fizzbuzz(n):\n    if n % {a1} == 0 and n % {a2} == 0:\n        return "fizzbuzz"\n'
          '    if n % {a1} == 0:\n        return "fizz"\n    if n % {a2} == 0:\n        return "buzz"\n    return n',
          "numbers = list(range({a3}, {a4} + 1))", "new_list = [fizzbuzz(n) for n in numbers]", "print(new_list)"],
    "11": ["my_dict = dict(zip({a1}, {a2}))", "def invert(d):\n    return {{v: k for k, v in d.items()}}",
           "def is_inverted(d1, d2):\n    return invert(d1) == d2",
           'my_dict2 = invert(my_dict) if "{a3}" == "inverted" else dict(my_dict)',
           "print(is_inverted(my_dict, my_dict2))"],
    "12": ["class Player:\n    def __init__(self, name, age, height, weight):\n"
           "        self.name, self.age, self.height, self.weight = name, age, height, weight",
           'Player.get_age = lambda self: f"{{self.name}} is age {{self.age}}"\n'
           'Player.get_height = lambda self: f"{{self.name}} is {{self.height}} cm"\n'
           'Player.get_weight = lambda self: f"{{self.name}} weighs {{self.weight}} kg"',
           'player = Player("{a1}", {a2}, {a3}, {a4})', 'print(getattr(player, "get_{a5}")())'],
    "14": ["from sklearn.linear_model import LinearRegression", "import math", "x = list(range(0, 11))",
           "def f(v):\n    return v * 2", "y = np.array([f(v) for v in x])", "model = LinearRegression()",
           "model.fit(np.array(x).reshape(-1, 1), y.reshape(-1, 1))", "x_hat = model.predict([[{a1}]])",
           "print(int(math.ceil(round(float(x_hat[0][0]), 6))))"],
    "31": ["two_edges = {a} + {b}", "maximum_edge = two_edges - 1", "minimum_edge = abs({a} - {b}) + 1",
           "my_tuple = (maximum_edge, minimum_edge)", "print(my_tuple)"],
    "57": ["my_array = {A}",
           "max_subarray = max((my_array[i:j] for i in range(len(my_array))\n"
           "                    for j in range(i + 1, len(my_array) + 1)), key=sum)",
           "sum_subarray = sum(max_subarray)", "print(sum_subarray)"],
    "61": ["my_matrix = {A}", "diag_elements = np.atleast_2d(np.array(my_matrix)).diagonal()",
           "print(np.sum(diag_elements))"],
}
# Problem 31's test case 0 expects a wrong answer (see the data README); problem 14 imports
# scikit-learn, which cannot be imported under the original checker's reliability_guard.
BEST = {"31": 4, "14": 0}

# One wrong turn per problem: (turn index, replacement code).
WRONG: dict[str, tuple[int, str]] = {
    "1": (1, "my_string = my_string"),  # forgets to lowercase
    "2": (3, 'formatted = [f"{{x:.2f}}" for x in normalized]'),
    "3": (1, "def hours_to_seconds(h):\n    return h * 60"),
    "5": (3, "print(min(n_neg, n_pos))"),
    "6": (2, "means = df.sum()"),
    "7": (1, "numbers = list(range({a3}, {a4}))"),
    "11": (2, "def is_inverted(d1, d2):\n    return d1 == d2"),
    "12": (3, "print(player.get_weight())"),
    "31": (1, "maximum_edge = two_edges"),
    "57": (2, "sum_subarray = max(my_array)"),
    "61": (1, "diag_elements = np.diag(my_matrix)"),
}


def _programs(problem, turns):
    return [
        build_program(zip(problem.turns(t), [code.format(**problem.inputs[t]) for code in turns]))
        for t in problem.tests
    ]


@pytest.fixture(scope="module")
def scored():
    """(pid, variant) -> list of pass flags over the 5 test cases, all scored in one pool."""
    problems = load_mtpb(mtpb_path()).by_id()
    jobs = []
    for pid, turns in ORACLES.items():
        variants = {"right": turns}
        if pid in WRONG:
            index, code = WRONG[pid]
            variants["wrong"] = [code if i == index else c for i, c in enumerate(turns)]
        for variant, codes in variants.items():
            problem = problems[pid]
            for test, program in zip(problem.tests, _programs(problem, codes)):
                jobs.append(((pid, variant), program, problem.expected(test)))
    with ExecutionPool(preload=SCORE_PRELOAD) as pool:
        scores = score_programs([(program, expected) for _, program, expected in jobs], pool)
    flags: dict[tuple[str, str], list[bool]] = {}
    details: dict[tuple[str, str], list] = {}
    for (key, _, _), score in zip(jobs, scores):
        flags.setdefault(key, []).append(score.passed)
        details.setdefault(key, []).append(score)
    return flags, details


def test_oracles_cover_every_category():
    problems = load_mtpb(mtpb_path()).by_id()
    assert {problems[p].category for p in ORACLES} == {"string", "math", "array", "data science",
                                                       "algorithm", "dict", "class"}
    assert all(len(code) == problems[p].n_turns for p, code in ORACLES.items())


@pytest.mark.parametrize("pid", sorted(ORACLES, key=int))
def test_correct_program_passes_every_test_case(scored, pid):
    flags, details = scored
    assert sum(flags[pid, "right"]) == BEST.get(pid, 5), details[pid, "right"]
    if pid == "31":
        assert flags[pid, "right"][0] is False  # exactly the test case with the wrong expected output


@pytest.mark.parametrize("pid", sorted(WRONG, key=int))
def test_wrong_variant_fails(scored, pid):
    flags, details = scored
    assert sum(flags[pid, "wrong"]) < BEST.get(pid, 5), details[pid, "wrong"]


HOSTILE = {
    "prints the harness's marker itself": 'print("\\nnonce\\n{\\"printed\\": true}\\nnonce\\n")\nimport os\nos._exit(0)',
    "exits before printing": "import sys\nsys.exit(0)\nprint(5)",
    "replaces builtins.print": "import builtins\nbuiltins.print = lambda *a, **k: None\nprint(5)",
    "kills its own process after printing": "print(5)\nimport signal\nsignal.raise_signal(signal.SIGKILL)",
    "writes a fake report to the real stdout": "import os\nos.write(1, b'\\n0\\n{\"printed\": true, \"value\": {\"t\": \"int\", \"v\": 5}}\\n0\\n')",
    "prints an object that lies about equality": "class A:\n    def __eq__(self, o):\n        return True\n    def __int__(self):\n        return 5\nprint(A())",
}


def test_hostile_programs_cannot_fake_a_pass():
    with ExecutionPool(workers=2) as pool:
        scores = score_programs([(code, 5) for code in HOSTILE.values()], pool, time_limit=2.0)
    verdicts = dict(zip(HOSTILE, scores))
    assert not verdicts["prints the harness's marker itself"].passed
    assert not verdicts["exits before printing"].passed
    assert not verdicts["writes a fake report to the real stdout"].passed
    # legitimate by the reference's rules: the program's own print wrapper still records the call,
    # and an int() cast of the printed object is what the checker does for an expected int
    assert verdicts["replaces builtins.print"].passed
    assert verdicts["prints an object that lies about equality"].passed
    assert not verdicts["kills its own process after printing"].passed
