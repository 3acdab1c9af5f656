"""Every `opencodegen` command line in README.md and docs/ parses with today's CLI, so the docs
cannot drift from the flags (running them: test_docs_run.py)."""

from __future__ import annotations

import shlex
from collections import defaultdict

import pytest

from docs_lines import documented_commands, documented_lines
from opencodegen.cli import build_parser

COMMANDS = [(line.where, line.arguments(defaultdict(lambda: "0"))) for line in documented_commands()]
# a loop's or the user's shell variable ($i, $STDLIB) stands for any value: 0


def test_the_docs_hold_the_commands_users_copy():
    commands = {words[0] for _, words in COMMANDS}
    assert {"generate", "chat", "eval", "serve", "train", "data", "convert", "init", "info"} <= commands


@pytest.mark.parametrize(("where", "words"), COMMANDS, ids=[f"{w}:{' '.join(c)[:50]}" for w, c in COMMANDS])
def test_a_documented_command_parses(where, words, capsys):
    try:
        build_parser().parse_args(words)
    except SystemExit as stop:
        pytest.fail(f"{where}: `opencodegen {shlex.join(words)}` does not parse: {capsys.readouterr().err.strip()}"
                    f" (exit {stop.code})")


TORCHRUN = [(line.where, line.text) for line in documented_lines() if line.is_torchrun and "..." not in line.text]


@pytest.mark.parametrize(("where", "line"), TORCHRUN, ids=[f"{w}:{line[:50]}" for w, line in TORCHRUN])
def test_torchrun_passes_a_documented_command_through_whole(where, line):
    """torchrun's own parser takes abbreviations of its flags from anywhere on the line: every
    argument after the module must reach opencodegen unchanged."""
    from torch.distributed.run import get_args_parser

    argv = shlex.split(line)[1:]
    parsed = get_args_parser().parse_args(argv)
    assert parsed.module and parsed.training_script == "opencodegen.cli", line
    assert parsed.training_script_args == argv[argv.index("opencodegen.cli") + 1 :], f"{where}: {line}"
