"""CodeGen truncation rules, stop strings across token boundaries, and what may be streamed."""

import random

import pytest

from opencodegen.errors import GenerationError
from opencodegen.generation.stopping import HUMANEVAL_STOPS, StopState, preset_stops, truncate_codegen

CASES = {
    "second top-level print": (
        "x = 1\nprint(x)\ny = 2\nprint(y)\nz = 3\n",
        "x = 1\nprint(x)\ny = 2\n",
    ),
    "one print is kept": ("x = 1\nprint(x)\n", "x = 1\nprint(x)\n"),
    "indented print is not top level": ("print(1)\nif x:\n    print(2)\n", "print(1)\nif x:\n    print(2)\n"),
    "second top-level def": (
        "def f():\n    return 1\n\ndef g():\n    return 2\n",
        "def f():\n    return 1\n\n",
    ),
    "methods are not top-level defs": (
        "def f():\n    def inner():\n        pass\n    return inner\n",
        "def f():\n    def inner():\n        pass\n    return inner\n",
    ),
    "comment line": ("    return a + b\n# test it\nassert f(1, 2) == 3\n", "    return a + b\n"),
    "indented and inline comments stay": (
        "    x = 1  # one\n    # two\n    return x\n",
        "    x = 1  # one\n    # two\n    return x\n",
    ),
    "completion starting with a comment": ("# nothing\nx = 1\n", ""),
    "end of text": ("    return 1<|endoftext|>def junk():\n", "    return 1"),
    "triple double quotes": ('    return s\n"""\nmore docs\n', "    return s\n"),
    "triple single quotes": ("    return s\n'''\nmore docs\n", "    return s\n"),
    "indented docstring stays": ('    """Doc."""\n    return 1\n', '    """Doc."""\n    return 1\n'),
    "three newlines": ("    return 1\n\n\nx = f()\n", "    return 1"),
    "two newlines are fine": ("    return 1\n\nx = f()\n", "    return 1\n\nx = f()\n"),
    "earliest terminal wins": ('a\n"""b\n# c\n\n\n', "a\n"),
    "print cut comes before terminals": ("print(1)\nx\nprint(2)\n# late\n", "print(1)\nx\n"),
    "the print pattern is a prefix match": ("printer = 1\nprint(printer)\n", "printer = 1\n"),
    "def cut applies to the print-cut text": (
        "def a():\n    pass\nprint(a())\ndef b():\n    pass\nprint(b())\n",
        "def a():\n    pass\nprint(a())\n",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_truncate_codegen_rules(name):
    text, expected = CASES[name]
    assert truncate_codegen(text) == expected


def feed_in_pieces(state, text, rng):
    """Feed `text` in random pieces until the state is done; return the streamed text."""
    streamed, pos = [], 0
    while pos < len(text) and not state.done:
        step = rng.randint(1, 6)
        state.feed(text[pos : pos + step])
        pos += step
        streamed.append(state.take_delta())
    state.finish()
    streamed.append(state.take_delta())
    return "".join(streamed)


FRAGMENTS = ["print(x)", "def f():", "\n", "\n", "\n", "    ", "#", "<|endoftext|>", "'''", '"""',
             "x = 1", "return y", "<|end", "class", "if", "ok"]


def test_incremental_codegen_truncation_equals_truncating_the_whole_text():
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 14)))
        state = StopState(codegen=True)
        streamed = feed_in_pieces(state, text, rng)
        # finishing early (before all text was fed) must give what the whole text gives
        assert state.final_text == truncate_codegen(text), text
        assert streamed == state.final_text


def test_stop_strings_across_token_boundaries():
    rng = random.Random(1)
    stops = ("\ndef", "\nif", "STOP")
    for _ in range(2000):
        text = "".join(rng.choice(FRAGMENTS + ["ST", "OP", "d", "ef", "i", "f"]) for _ in range(rng.randint(0, 12)))
        state = StopState(stops)
        streamed = feed_in_pieces(state, text, rng)
        found = [i for i in (text.find(s) for s in stops) if i >= 0]
        assert state.final_text == text[: min(found, default=len(text))]
        assert state.cut == bool(found)
        assert streamed == state.final_text


def test_stop_split_over_many_tokens_is_found_and_held_back():
    state = StopState(("\ndef",))
    assert not state.feed("    return 1\n")
    assert state.take_delta() == "    return 1"  # the "\n" might start "\ndef"
    assert not state.feed("de")
    assert state.take_delta() == ""
    assert state.feed("f g():")
    assert state.take_delta() == "" and state.final_text == "    return 1"


def test_presets():
    assert preset_stops("humaneval") == HUMANEVAL_STOPS == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    assert preset_stops("codegen") == () and preset_stops(None) == ()
    with pytest.raises(GenerationError, match="unknown truncation preset 'mbpp'"):
        preset_stops("mbpp")
