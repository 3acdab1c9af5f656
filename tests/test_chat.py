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
               "Show it": "print(xs)"}  # fmt: skip
    generator = ScriptedGenerator(lambda prompt, params, k: replies[prompt.rstrip("\n").rsplit("\n", 1)[-1][2:]])
    script = "\n".join([
        "Make a list", "Sort it", "Append 4", "/undo", "Show it",
        "/edit 2", "xs.sort(reverse=True)", "/end",
        "/code Count them", "n = len(xs)", "n", "/end",
        "/bogus", "/undo", "/edit 9", f"/save {tmp_path / 's.json'}", f"/export {tmp_path / 'p.py'}", "/quit",
        "never read",
    ])  # fmt: skip
    program, _ = _chat(script, generator)
    shown = capsys.readouterr().err  # with stdout not a terminal, the dialogue goes to stderr
    assert program == (PREFIX + "# Make a list\nxs = [3, 1, 2]\n\n# Sort it\nxs.sort(reverse=True)\n\n"
                       "# Show it\nprint(xs)\n\n")  # fmt: skip
    assert "undone: Append 4" in shown and "undone: Count them" in shown
    assert "[3, 2, 1]" in shown and "=> 3" in shown
    assert "unknown command /bogus" in shown and "no turn 9" in shown
    assert (tmp_path / "p.py").read_text() == program
    assert run_program(program).stdout == "[3, 2, 1]\n"
    assert [t["instruction"] for t in json.loads((tmp_path / "s.json").read_text())["turns"]] == [
        "Make a list", "Sort it", "Show it"]  # fmt: skip


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
    ])  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "opencodegen.cli", "chat", "--model", str(model_dir), "--temperature", "0",
         "--max-new-tokens", "16", "--device", "cpu", *options],
        input=script, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "turn 3: Print the list." in done.stderr and "undone: Print the list." in done.stderr
    assert done.stdout == export.read_text()
    assert done.stdout.count("\n# ") == 3 and "# Add one to each.\nnumbers = [n + 1 for n in numbers]\n" in done.stdout
    assert run_program(done.stdout).stdout == "[2, 3, 4]\n"
