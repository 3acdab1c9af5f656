"""Every `opencodegen` command line in README.md and docs/ parses with today's CLI, so the docs
cannot drift from the flags (the documented torchrun run itself: test_docs_torchrun.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from opencodegen.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def documented_lines() -> list[tuple[str, str]]:
    """(where, line) for each line of a shell block of the docs, continuations joined."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for language, block in FENCE.findall(doc.read_text()):
            if language not in ("", "bash", "sh", "shell", "console"):
                continue
            for line in block.replace("\\\n", " ").splitlines():
                found.extend((doc.name, part.split(" #", 1)[0].strip()) for part in line.split("&&"))
    return found


def documented_commands() -> list[tuple[str, str]]:
    """(where, arguments) of each opencodegen invocation; lines with a `...` placeholder are
    sketches, not commands, and are left out."""
    found = [(where, _opencodegen_args(line)) for where, line in documented_lines()]
    return [(where, command) for where, command in found if command is not None and "..." not in command]


def _opencodegen_args(text: str) -> str | None:
    """The arguments after `opencodegen` / `-m opencodegen.cli`, without redirection or `&`."""
    match = re.match(r"^(?:(?:\w+=\S*\s+)*opencodegen|.*-m opencodegen(?:\.cli)?)\s+(.*)$", text)
    if match is None:
        return None
    command = re.sub(r"\s*[<>]\s*\S+", "", match.group(1)).strip().rstrip("&;").strip()
    return re.sub(r"\$\{?\w+\}?", "0", command)  # a loop's or the user's shell variable: any value


COMMANDS = documented_commands()


def test_the_docs_hold_the_commands_users_copy():
    commands = {command.split()[0] for _, command in COMMANDS}
    assert {"generate", "chat", "eval", "serve", "train", "data", "convert", "init", "info"} <= commands


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{w}:{c[:50]}" for w, c in COMMANDS])
def test_a_documented_command_parses(where, command, capsys):
    try:
        build_parser().parse_args(shlex.split(command))
    except SystemExit as stop:
        pytest.fail(f"{where}: `opencodegen {command}` does not parse: {capsys.readouterr().err.strip()}"
                    f" (exit {stop.code})")


TORCHRUN = [(where, line) for where, line in documented_lines() if line.startswith("torchrun ") and "..." not in line]


@pytest.mark.parametrize(("where", "line"), TORCHRUN, ids=[f"{w}:{line[:50]}" for w, line in TORCHRUN])
def test_torchrun_passes_a_documented_command_through_whole(where, line):
    """torchrun's own parser takes abbreviations of its flags from anywhere on the line: every
    argument after the module must reach opencodegen unchanged."""
    from torch.distributed.run import get_args_parser

    argv = shlex.split(line)[1:]
    parsed = get_args_parser().parse_args(argv)
    assert parsed.module and parsed.training_script == "opencodegen.cli", line
    assert parsed.training_script_args == argv[argv.index("opencodegen.cli") + 1 :], f"{where}: {line}"
