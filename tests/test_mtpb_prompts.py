"""MTPB prompt assembly: byte-identical to the reference multi-turn format; batching; single-turn."""

from __future__ import annotations

from mtpb_helpers import FakeParams, ScriptedGenerator, mtpb_path
from opencodegen.evaluation.mtpb.data import load_mtpb
from opencodegen.evaluation.mtpb.generate import generate_multi_turn, generate_single_turn, stream_key
from opencodegen.synthesis.history import turn_prompt


def _fake_code(prompt, params, k):
    """A completion that names the turn (number of turn comments so far), the sample and the budget."""
    return f"step_{prompt.count(chr(10) + '# ')} = {k}  # budget {params.max_new_tokens}"


def test_problem_1_multi_turn_program_is_byte_identical_to_the_reference_format():
    problem = load_mtpb(mtpb_path()).by_id()["1"]
    generator = ScriptedGenerator(_fake_code)
    records = generate_multi_turn(generator, [problem], FakeParams(n=2))
    program = next(r["program"] for r in records if r["test"] == 0 and r["sample"] == 1)
    assert program == (
        "# Import libraries.\n\nimport numpy as np\n\n"
        '# Assign the string "abcde" to a variable named "my_string".\n'
        "step_1 = 1  # budget 128\n\n"
        '# Lowercase the given string "my_string".\n'
        "step_2 = 0  # budget 128\n\n"
        "# Assign the distinct characters of the string to a variable named \"chars\".\n"
        "step_3 = 0  # budget 128\n\n"
        "# Sort these characters in alphabetical order.\n"
        "step_4 = 0  # budget 128\n\n"
        "# Print the resulting list of characters.\n"
        "step_5 = 0  # budget 128\n\n"
    )


def _reference_history(problem, test, complete):
    """The spec's multi-turn loop, written out independently of the code under test."""
    history = "# Import libraries.\n\nimport numpy as np\n\n"
    for turn, template in enumerate(problem.prompts):
        history += "# " + template.format(**problem.inputs[test]) + "\n"
        completion = complete(history, turn)
        history += completion + "\n\n"
    return history


def test_every_problem_matches_the_reference_loop_and_batches_each_turn_in_one_call():
    for problem in load_mtpb(mtpb_path()).problems:
        generator = ScriptedGenerator(lambda prompt, params, k: f"x = {len(prompt)} + {k}")
        records = generate_multi_turn(generator, [problem], FakeParams(n=2, seed=7))
        assert len(records) == 2 * len(problem.tests)
        for r in records:
            # samples fork at turn 1 (k = sample); later turns draw one completion per history (k = 0)
            expected = _reference_history(
                problem, r["test"], lambda h, turn, s=r["sample"]: f"x = {len(h)} + {s if turn == 0 else 0}"
            )
            assert r["program"] == expected, problem.id
        # one generate call per turn: 5 prompts x n at turn 1, then all 5 x n histories with n=1
        assert len(generator.calls) == problem.n_turns
        first_prompts, first_params = generator.calls[0]
        assert len(first_prompts) == len(problem.tests) and first_params.n == 2
        assert all(len(prompts) == 2 * len(problem.tests) and p.n == 1 for prompts, p in generator.calls[1:])
        assert {(p.truncate, p.max_new_tokens) for _, p in generator.calls} == {("codegen", problem.max_gen_length)}
        assert {p.seed for _, p in generator.calls} == {7}  # the run's seed; the stream comes from the key
        # every row of every turn draws from its own stream: (problem, test, turn) key + sample index
        streams = []
        for (_, params), (keys, first) in zip(generator.calls, generator.streams):
            firsts = [first] * len(keys) if isinstance(first, int) else first
            streams += [(key, f + j) for key, f in zip(keys, firsts) for j in range(params.n)]
        expected = [(stream_key(problem, t, turn), s) for turn in range(problem.n_turns) for t in problem.tests
                    for s in range(2)]
        assert sorted(streams) == sorted(expected)


def test_problem_17_multi_line_prompt_is_kept_verbatim():
    problem = load_mtpb(mtpb_path()).by_id()["17"]
    text = problem.turns(0)[0]
    assert "\n# str(4) = 4" in text
    assert turn_prompt(text) == "# " + text + "\n"
    assert turn_prompt("first line\nsecond line") == "# first line\n# second line\n"


def test_single_turn_concatenates_the_prompts_with_the_summed_budget():
    problem = load_mtpb(mtpb_path()).by_id()["3"]
    generator = ScriptedGenerator(lambda prompt, params, k: "print(1)")
    records = generate_single_turn(generator, [problem], FakeParams(n=3))
    [(prompts, params)] = generator.calls
    assert params.max_new_tokens == 3 * 128 and params.truncate is None and params.n == 3
    assert prompts[1] == (
        "# Import libraries.\n\nimport numpy as np\n\n"
        "# Write a function that takes an integer minutes and converts it to seconds.\n"
        "# Write a function that takes an integer hours and converts it to seconds.\n"
        "# Print the total seconds of 1 hours and 2 minutes.\n"
    )
    assert len(records) == 15 and records[4]["program"] == prompts[1] + "print(1)"
    assert {r["mode"] for r in records} == {"single"}
