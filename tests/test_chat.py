"""`opencodegen chat` scripted through stdin: turns, commands, the program on stdout, export."""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys

import pytest
import torch

from generation_helpers import make_model_dir
from mtpb_helpers import FakeParams, ScriptedGenerator
from opencodegen.commands.chat import Chat
from opencodegen.execution import run_program
from opencodegen.model import CodeGenForCausalLM
from opencodegen.synthesis.history import PREFIX
from opencodegen.synthesis.interpreter import Interpreter
from opencodegen.synthesis.session import Session
from opencodegen.tokenizer import CodeGenTokenizer

FAST = functools.partial(Interpreter, timeout=2.0)


def _chat(script: str, generator) -> tuple[str, Session]:
    out = io.StringIO()
    session = Session(generator, FakeParams(), interpreter_factory=FAST)
    with session:
        assert Chat(session, io.StringIO(script), out).loop() == 0
        return out.getvalue(), session


def test_scripted_chat_with_commands(tmp_path, capsys):
    replies = {"Make a list": "xs = [3, 1, 2]", "Sort it": "xs.sort()", "Append 4": "xs.append(4)",
               "Show it": "print(xs)"}
    generator = ScriptedGenerator(lambda prompt, params, k: replies[prompt.rstrip("\n").rsplit("\n", 1)[-1][2:]])
    script = "\n".join([
        "Make a list", "Sort it", "Append 4", "/undo", "Show it",
        "/edit 2", "xs.sort(reverse=True)", "/end",
        "/code Count them", "n = len(xs)", "n", "/end",
        "/bogus", "/undo", "/edit 9", f"/save {tmp_path / 's.json'}", f"/export {tmp_path / 'p.py'}", "/quit",
        "never read",
    ])
    program, _ = _chat(script, generator)
    shown = capsys.readouterr().err  # with stdout not a terminal, the dialogue goes to stderr
    assert program == (PREFIX + "# Make a list\nxs = [3, 1, 2]\n\n# Sort it\nxs.sort(reverse=True)\n\n"
                       "# Show it\nprint(xs)\n\n")
    assert "undone: Append 4" in shown and "undone: Count them" in shown
    assert "[3, 2, 1]" in shown and "=> 3" in shown
    assert "unknown command /bogus" in shown and "no turn 9" in shown
    assert (tmp_path / "p.py").read_text() == program
    assert run_program(program).stdout == "[3, 2, 1]\n"
    assert [t["instruction"] for t in json.loads((tmp_path / "s.json").read_text())["turns"]] == [
        "Make a list", "Sort it", "Show it"]


def test_chat_without_turns_and_errors_do_not_stop_it(capsys):
    program, session = _chat("/undo\n/retry\n/save\n\n/help\n", None)
    shown = capsys.readouterr().err
    assert program == PREFIX and not session.turns
    assert "nothing to undo" in shown and "/save needs a file name" in shown and "/export FILE" in shown


def _eos_model(path):
    """A tiny random checkpoint whose every greedy completion is empty (EOS first)."""
    make_model_dir(path)
    model = CodeGenForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.bias[CodeGenTokenizer.from_pretrained(path).eos_token_id] = 1e4
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("options", [[], ["--quantize", "int8"]], ids=["float32", "int8"])
def test_chat_cli_with_a_tiny_model(tmp_path, options):
    model_dir = _eos_model(tmp_path / "tiny")
    export = tmp_path / "out.py"
    script = "\n".join([
        "Make a list of three numbers.", "Add one to each.", "Print the list.",
        "/undo", "/edit 1", "numbers = [1, 2, 3]", "/end", "/edit 2", "numbers = [n + 1 for n in numbers]", "/end",
        "/code Print them.", "print(numbers)", "/end", f"/export {export}",
    ])
    done = subprocess.run(
        [sys.executable, "-m", "opencodegen.cli", "chat", "--model", str(model_dir), "--temperature", "0",
         "--max-new-tokens", "16", "--device", "cpu", *options],
        input=script, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "turn 3: Print the list." in done.stderr and "undone: Print the list." in done.stderr
    assert done.stdout == export.read_text()
    assert done.stdout.count("\n# ") == 3 and "# Add one to each.\nnumbers = [n + 1 for n in numbers]\n" in done.stdout
    assert run_program(done.stdout).stdout == "[2, 3, 4]\n"


# ----------------------------------------------------------------------------- hostile output and input

ESCAPES = {
    "clipboard": "\x1b]52;c;ZWNobyBwd25lZA==\x07",  # OSC 52: write the clipboard
    "title": "\x1b]0;pwned\x1b\\",  # OSC 0: set the window title
    "clear": "\x1b[2J\x1b[H\x1bc",  # erase the screen, home, full reset
    "c1": "\x9b31m\x90q\x9c",  # 8-bit CSI / DCS / ST
}


def test_sandboxed_output_cannot_drive_the_terminal(capsys):
    code = "\n".join([
        f"print({ESCAPES['clipboard']!r}, 'tab\\there')",
        "import sys",
        f"sys.stderr.write({ESCAPES['title']!r})",
        f"class V:\n    def __repr__(self):\n        return {ESCAPES['clear']!r}",
        "V()",
    ])
    script = "\n".join([f"/code Escape {ESCAPES['title']}", code, "/end", "/code Fail.",
                        f"raise RuntimeError({ESCAPES['c1']!r})", "/end", "/show", "/undo"])
    program, _ = _chat(script, None)
    shown = capsys.readouterr().err
    controls = [c for c in shown if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0]
    assert controls == []
    for visible in ("\\x1b]52;c;ZWNobyBwd25lZA==\\x07 tab ", "\\x1b]0;pwned\\x1b\\", "=> \\x1b[2J\\x1b[H\\x1bc",
                    "RuntimeError: \\x9b31m\\x90q\\x9c", "turn 1: Escape \\x1b]0;pwned\\x1b\\"):
        assert visible in shown
    assert "\x1b" not in program.split("\n\n# Escape")[1].splitlines()[0]  # the instruction's comment line


@pytest.mark.parametrize("breaker", ["\r", "\r\n", "\n", "\v", "\f", "\x1c", "\x85", "\u2028", "\x00", "\x1b"])
def test_an_instruction_is_always_comments_never_code(breaker, tmp_path):
    instruction = f"Make x.{breaker}print('INJECTED'){breaker}x = 2"
    generator = ScriptedGenerator(lambda prompt, params, k: "x = 1")
    with Session(generator, FakeParams(), interpreter_factory=FAST) as session:
        session.add_turn(instruction)
        session.add_turn("Show it.", "print(x)")
        (prompt,), _ = generator.calls[0]
        exported = session.export(tmp_path / "p.py").read_text(encoding="utf-8")
    comment = prompt[len(PREFIX):]
    assert all(line.startswith("# ") for line in comment.splitlines()) and comment.endswith("\n")
    assert not any(ord(c) < 0x20 and c not in "\n" for c in comment)
    assert comment in exported and exported.count("INJECTED") == 1
    assert run_program(exported).stdout == "1\n"  # neither the print nor `x = 2` ran


def test_command_errors_are_one_line_and_the_session_goes_on(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    script = "\n".join([
        "/edit", "/code Make x.", "x = 1", "/end",
        f"/export {blocker}/sub/p.py", f"/save {tmp_path}", f"/save {blocker}/s.json", "/edit [red]two[/red]",
        "/edit 7", "/bogus [bold]", "/code Show x.", "print(x)", "/end", f"/export {tmp_path / 'p.py'}",
    ])
    program, session = _chat(script, None)
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [
        "error: no turn to edit",
        f"error: cannot write {blocker}/sub/p.py: Not a directory ({blocker}/sub)",
        f"error: cannot write {tmp_path}: Is a directory",
        f"error: cannot write {blocker}/s.json: File exists ({blocker})",
        "error: /edit takes a turn number, not '[red]two[/red]'",
        "error: no turn 7 (the session has 1)",
        "error: unknown command /bogus (/help lists them)",
    ]
    assert not any("Traceback" in line for line in lines)
    assert [t.instruction for t in session.turns] == ["Make x.", "Show x."]
    assert (tmp_path / "p.py").read_text() == program and run_program(program).stdout == "1\n"


def test_tracebacks_and_panels_name_the_turn_the_user_sees(capsys):
    script = "\n".join(["/code One.", "x = 1", "/end", "/code Two.", "x / 0", "/end", "/run", "/undo",
                        "/code Again two.", "y", "/end"])
    _chat(script, None)
    shown = capsys.readouterr().err
    assert shown.count("turn 2: Two.") == 2 and "turn 2: Again two." in shown  # added, re-run, and the new one
    assert shown.count('File "<turn 2>", line 1') == 3
    assert "<turn 3>" not in shown and "<turn 1>" not in shown


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_spinner_shows_while_a_turn_is_written():
    generator = ScriptedGenerator(lambda prompt, params, k: "x = 1")
    screen = _Terminal()
    with Session(generator, FakeParams(), interpreter_factory=FAST) as session:
        chat = Chat(session, _Terminal(), screen)
        chat._lines = iter(["Make x.", "/quit"])  # typed lines (a terminal is read with input())
        assert chat.loop() == 0
    assert "turn 1: writing and running the code" in screen.getvalue() and len(generator.calls) == 1
    piped = Chat(session, io.StringIO(""), io.StringIO())
    assert piped._busy("x").__class__.__name__ == "nullcontext"  # no spinner in a pipe
