"""Multi-turn sessions: persistent sandboxed state, edit/regenerate, undo with real rollback,
export/save/load, dead interpreters, and containment identical to evaluation's sandbox."""

from __future__ import annotations

import functools
import json
import os
import socket
import time

import pytest

from execution_helpers import processes_with
from mtpb_helpers import FakeParams, ScriptedGenerator
from opencodegen.errors import DataError, GenerationError
from opencodegen.execution import isolation_report, run_program
from opencodegen.synthesis.history import PREFIX
from opencodegen.synthesis.interpreter import Interpreter
from opencodegen.synthesis.session import Session

FAST = functools.partial(Interpreter, timeout=2.0)


@pytest.fixture
def session():
    with Session(interpreter_factory=FAST) as s:
        yield s


def test_state_carries_and_each_turn_reports_code_output_value_and_error(session):
    first = session.add_turn("Make a list.", "xs = [3, 1, 2]\nprint('made', len(xs))")
    assert (first.output.status, first.output.stdout, first.output.value) == ("ok", "made 3\n", None)
    second = session.add_turn("Sort it and show it.", "xs.sort()\nxs")
    assert second.output.value == "[1, 2, 3]"
    third = session.add_turn("Use numpy from the prefix.", "import sys\nprint('w', file=sys.stderr)\nnp.sum(xs)")
    assert third.output.stderr == "w\n" and third.output.value in ("6", "np.int64(6)")
    broken = session.add_turn("Fail.", "undefined_name + 1")
    assert broken.output.status == "error" and "NameError" in broken.output.error and "<turn" in broken.output.error
    assert session.add_turn("Still alive.", "len(xs)").output.value == "3"


def test_undo_really_rolls_the_state_back(session):
    session.add_turn("Make a list.", "xs = [1, 2, 3]")
    session.add_turn("Mutate it and leave a file.", "xs.append(4)\nopen('mark.txt', 'w').write('x')")
    assert session.add_turn("Look.", "(xs, __import__('os').path.exists('mark.txt'))").output.value == "([1, 2, 3, 4], True)"
    session.undo()
    undone = session.undo()
    assert undone.instruction == "Mutate it and leave a file."
    # replayed into a fresh interpreter: the mutation and the file are gone
    assert session.add_turn("Look again.", "(xs, __import__('os').path.exists('mark.txt'))").output.value == "([1, 2, 3], False)"
    assert [t.instruction for t in session.turns] == ["Make a list.", "Look again."]
    session.undo(), session.undo()
    with pytest.raises(GenerationError, match="nothing to undo"):
        session.undo()


def test_edit_reruns_later_turns_on_the_earlier_state(session):
    session.add_turn("Set a.", "a = 2")
    session.add_turn("Double it.", "b = a * 2\nb")
    session.add_turn("Show.", "a + b")
    session.edit_turn(0, "a = 10")
    assert [t.output.value for t in session.turns] == [None, "20", "30"]
    with pytest.raises(GenerationError, match="no turn 5"):
        session.edit_turn(5, "x = 1")


def test_model_writes_and_regenerates_turns_from_the_multi_turn_prompt():
    codes = iter(["x = 1", "y = x + 1\ny", "y = x + 41\ny"])
    generator = ScriptedGenerator(lambda prompt, params, k: next(codes))
    with Session(generator, FakeParams(n=4, max_new_tokens=64), interpreter_factory=FAST) as s:
        s.add_turn("Set x to one.")
        assert s.add_turn("Add one.").output.value == "2"
        assert generator.calls[1][0] == [PREFIX + "# Set x to one.\nx = 1\n\n# Add one.\n"]
        assert {(p.n, p.truncate, p.max_new_tokens) for _, p in generator.calls} == {(1, "codegen", 64)}
        assert s.regenerate_turn().output.value == "42"
        assert generator.calls[2][0] == generator.calls[1][0]
    with Session(interpreter_factory=FAST) as no_model, pytest.raises(GenerationError, match="no model"):
        no_model.add_turn("Write something.")


def test_export_save_and_load_round_trip(session, tmp_path):
    session.add_turn("Make data.", "data = {'a': 1}")
    session.add_turn("Print the keys.", "print(sorted(data))")
    program = session.export(tmp_path / "program.py").read_text()
    assert program == session.program() and program.startswith(PREFIX)
    assert run_program(program).stdout == "['a']\n"
    saved = json.loads(session.save(tmp_path / "s.json").read_text())
    assert saved["format"] == "opencodegen.session" and saved["turns"][1]["stdout"] == "['a']\n"
    with Session.load(tmp_path / "s.json", interpreter_factory=FAST) as again:
        assert again.program() == program
        assert again.add_turn("Use the restored state.", "data['a'] + 1").output.value == "2"
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not an opencodegen session"):
        Session.load(tmp_path / "bad.json")


def test_a_turn_that_hangs_kills_the_interpreter_and_the_next_turn_replays_the_state(session):
    session.add_turn("Keep a value.", "kept = 41")
    hung = session.add_turn("Hang.", "while True:\n    pass")
    assert hung.output.status == "timeout" and "ran past" in hung.output.error
    # a fresh interpreter gets the earlier turns replayed; the hanging turn is skipped
    assert session.add_turn("Use the value.", "kept + 1").output.value == "42"
    session.undo()
    assert session.undo().output.status == "timeout"
    assert session.add_turn("Still there.", "kept").output.value == "41"


# ------------------------------------------------------------------ containment, as in evaluation

PROBE = """
import json, os, socket
obs = dict()
try:
    open({outside!r}, "w").write("x")
    obs["write_outside"] = True
except OSError:
    obs["write_outside"] = False
obs["repo_visible"] = os.path.exists({repo!r})
obs["secret"] = os.environ.get("OPENCODEGEN_PROBE_SECRET")
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
    obs["loopback"] = True
except OSError:
    obs["loopback"] = False
obs["root"] = os.getuid() == 0
obs["few_pids"] = len([p for p in os.listdir("/proc") if p.isdigit()]) < 10
obs["hostname"] = socket.gethostname()
print(json.dumps(obs))
"""


@pytest.mark.skipif(
    not isolation_report()["mode"].startswith("bwrap"), reason="no sandbox here: hostile programs must not run unisolated"
)
def test_hostile_turn_is_contained_exactly_like_an_evaluation_job(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENCODEGEN_PROBE_SECRET", "s3cret")
    listener = socket.create_server(("127.0.0.1", 0))
    outside = tmp_path / "pwned.txt"
    probe = PROBE.format(outside=str(outside), repo=os.getcwd(), port=listener.getsockname()[1])
    try:
        in_evaluation = json.loads(run_program(probe).stdout)
        with Session(interpreter_factory=FAST) as s:
            in_session = json.loads(s.add_turn("Probe.", probe).output.stdout)
    finally:
        listener.close()
    assert in_session == in_evaluation
    assert not outside.exists()
    assert in_session["write_outside"] is False and in_session["secret"] is None
    assert in_session["loopback"] is False and in_session["few_pids"] is True


SPAWN = """import os, subprocess
sleeper = subprocess.Popen(['sleep', '{marker}'])
r, w = os.pipe()
if os.fork() == 0:  # a child in a session of its own leaves an orphan behind
    os.setsid()
    orphan = os.fork()
    if orphan == 0:
        while True:
            pass
    os.write(w, str(orphan).encode())
    os._exit(0)
orphan = int(os.read(r, 32))
spinner = os.fork()
if spinner == 0:
    while True:
        pass
started = [sleeper.pid, orphan, spinner]
len(started)"""
GONE = """def gone(pid):
    return not os.path.exists(f"/proc/{pid}")
[gone(pid) for pid in started]"""


def test_no_process_a_turn_started_outlives_the_turn(session):
    marker = f"{time.time_ns() % 10**9 + 10**9}"
    spawned = session.add_turn("Start processes that spin.", SPAWN.format(marker=marker))
    assert (spawned.output.status, spawned.output.value) == ("ok", "3"), spawned.output
    assert not processes_with(marker)  # killed before the turn answered
    checked = session.add_turn("Look for them.", GONE)
    assert checked.output.value == "[True, True, True]", checked.output  # the sleep, the orphan, the spinner
    session.add_turn("Fork and come back.", "import os\npid = os.fork()\npid")
    assert session.add_turn("Still one interpreter answering.", "len(started)").output.value == "3"


def test_memory_and_crashes_end_the_interpreter_with_the_right_status():
    bomb = ("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        b = bytearray(150 << 20)\n"
            "        b[::4096] = b'x' * len(b[::4096])\n        time.sleep(60)\ntime.sleep(60)")
    with Interpreter(timeout=20, memory_mb=300) as interpreter:
        assert "MemoryError" in interpreter.run("bytearray(1 << 40)").error  # one process: its own limit
        assert interpreter.run("len('still alive')").value == "11"
        over = interpreter.run(bomb)  # several processes: the sandbox's total-memory watch
        assert (over.status, interpreter.alive) == ("memory", False), over
    with Interpreter(timeout=20) as interpreter:
        crashed = interpreter.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
        assert (crashed.status, interpreter.alive) == ("crashed", False)
