"""A multi-turn program-synthesis session: the user states a step, the model writes its code,
the code runs in a persistent sandboxed interpreter, and the state carries to the next turn.

    with Session(generator, params) as s:
        turn = s.add_turn("Assign the list [3, 1, 2] to a variable named xs.")
        turn.code, turn.stdout, turn.value
        s.undo()                      # real rollback: replays the earlier turns in a fresh interpreter
        s.export("program.py"); s.save("session.json"); Session.load("session.json")

With `generator=None` the caller supplies each turn's code (`add_turn(instruction, code=...)`).
The prompt of a turn is the program so far plus `# <instruction>\\n` (the CodeGen multi-turn
format of `synthesis.history`), and the completion is cut with the CodeGen truncation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opencodegen.errors import DataError, GenerationError
from opencodegen.synthesis.history import PREFIX, build_program, turn_prompt
from opencodegen.synthesis.interpreter import Interpreter, TurnOutput

SESSION_FORMAT = "opencodegen.session"
SESSION_VERSION = 1
DEAD_STATUSES = ("timeout", "memory", "crashed")  # the turn killed the interpreter


@dataclass
class Turn:
    """One step: the instruction, its code and what running it produced."""

    instruction: str
    code: str
    output: TurnOutput = field(default_factory=TurnOutput)

    def to_json(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "code": self.code, **dataclasses.asdict(self.output)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Turn:
        fields = {f.name for f in dataclasses.fields(TurnOutput)}
        output = TurnOutput(**{k: v for k, v in data.items() if k in fields})
        return cls(str(data["instruction"]), str(data["code"]), output)


class Session:
    """Turns of a program, their outputs, and the live interpreter that holds their state."""

    def __init__(
        self,
        generator: Any = None,
        params: Any = None,
        *,
        prefix: str = PREFIX,
        interpreter_factory: Callable[[], Interpreter] = Interpreter,
    ):
        self.generator = generator
        self.params = params
        self.prefix = prefix
        self.turns: list[Turn] = []
        self.prefix_output = TurnOutput()
        self._factory = interpreter_factory
        self._interpreter: Interpreter | None = None
        self._applied = 0  # turns whose effects the live interpreter holds

    # ----------------------------------------------------------------------------- queries

    def program(self, upto: int | None = None) -> str:
        """The program of the first `upto` turns (all by default) in the multi-turn format."""
        turns = self.turns if upto is None else self.turns[:upto]
        return build_program(((t.instruction, t.code) for t in turns), self.prefix)

    def prompt(self, index: int, instruction: str) -> str:
        """What the model sees to write turn `index`: the program before it and the new comment."""
        return self.program(index) + turn_prompt(instruction)

    # ----------------------------------------------------------------------------- editing

    def add_turn(self, instruction: str, code: str | None = None) -> Turn:
        """Append a turn; the model writes its code unless `code` is given. Runs it."""
        if not instruction.strip():
            raise GenerationError("an instruction is empty")
        index = len(self.turns)
        if code is None:
            code = self.write_code(index, instruction)
        self.turns.append(Turn(instruction, code))
        self._run_from(index)
        return self.turns[index]

    def write_code(self, index: int, instruction: str) -> str:
        """The model's code for turn `index` given the turns before it."""
        if self.generator is None:
            raise GenerationError("this session has no model: give the code of the turn")
        params = dataclasses.replace(self.params, n=1, truncate="codegen")
        [[completion]] = self.generator.generate([self.prompt(index, instruction)], params)
        return completion.text

    def edit_turn(self, index: int, code: str) -> Turn:
        """Replace a turn's code; it and every later turn run again on the state before it."""
        turn = self.turns[self._index(index)]
        turn.code = code
        self._run_from(self._index(index))
        return turn

    def regenerate_turn(self, index: int = -1) -> Turn:
        """Let the model write a turn's code again (later turns keep their code and re-run)."""
        i = self._index(index)
        return self.edit_turn(i, self.write_code(i, self.turns[i].instruction))

    def undo(self) -> Turn:
        """Remove the last turn and roll the interpreter state back to before it."""
        if not self.turns:
            raise GenerationError("nothing to undo")
        turn = self.turns.pop()
        self._rollback(len(self.turns))
        return turn

    def rerun(self) -> None:
        """Run the whole program again in a fresh interpreter."""
        self.close()
        self._run_from(0, everything=True)

    # ----------------------------------------------------------------------------- running

    def _index(self, index: int) -> int:
        if not -len(self.turns) <= index < len(self.turns):
            raise GenerationError(f"no turn {index} (the session has {len(self.turns)})")
        return index % len(self.turns)

    def _live(self) -> Interpreter:
        if self._interpreter is None or not self._interpreter.alive:
            if self._interpreter is not None:
                self._interpreter.close()
            self._interpreter = self._factory()
            self._applied = 0
            self.prefix_output = self._interpreter.run(self.prefix, name="prefix")
        return self._interpreter

    def _rollback(self, keep: int) -> None:
        """Make the interpreter hold exactly the first `keep` turns (fresh one + replay if needed)."""
        if self._applied > keep or (self._interpreter is not None and not self._interpreter.alive):
            if self._interpreter is not None:
                self._interpreter.close()
            self._interpreter = None
        self._live()
        while self._applied < keep:
            self._execute(self._applied, replay=True)

    def _run_from(self, index: int, everything: bool = False) -> None:
        """Run turn `index` and the later ones; later turns that killed the interpreter before are
        skipped (as in a replay) unless `everything`."""
        for i in range(index, len(self.turns)):
            self._rollback(i)  # a no-op unless the previous turn killed the interpreter
            self._execute(i, replay=i > index and not everything)

    def _execute(self, i: int, replay: bool) -> None:
        turn = self.turns[i]
        if replay and turn.output.status in DEAD_STATUSES:
            self._applied += 1  # it killed the interpreter before: skipped in a replay
            return
        interpreter = self._live()
        turn.output = interpreter.run(turn.code, name=f"turn {i + 1}")  # numbered as the user sees turns
        # a turn that killed the interpreter: the next run starts a fresh one and replays without it
        self._applied = i + 1 if interpreter.alive else 0

    # ----------------------------------------------------------------------------- files

    def export(self, path: str | os.PathLike[str]) -> Path:
        """Write the program as a runnable .py file."""
        return _write(Path(path), self.program())

    def to_json(self) -> dict[str, Any]:
        params = dataclasses.asdict(self.params) if dataclasses.is_dataclass(self.params) else None
        return {
            "format": SESSION_FORMAT,
            "version": SESSION_VERSION,
            "prefix": self.prefix,
            "sampling": params,
            "turns": [t.to_json() for t in self.turns],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the session (turns, code, outputs, sampling settings) as JSON."""
        return _write(Path(path), json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        generator: Any = None,
        params: Any = None,
        *,
        run: bool = True,
        interpreter_factory: Callable[[], Interpreter] = Interpreter,
    ) -> Session:
        """Reload a saved session; with `run` its turns are replayed so the state is live again."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read session {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != SESSION_FORMAT:
            raise DataError(f"{path} is not an opencodegen session file")
        if data.get("version") != SESSION_VERSION:
            raise DataError(f"{path}: unsupported session version {data.get('version')!r}")
        session = cls(generator, params, prefix=str(data["prefix"]), interpreter_factory=interpreter_factory)
        try:
            session.turns = [Turn.from_json(t) for t in data["turns"]]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: malformed turn ({exc})") from None
        if run:
            session.rerun()
        return session

    # ----------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        if self._interpreter is not None:
            self._interpreter.close()
            self._interpreter = None
            self._applied = 0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write(path: Path, text: str) -> Path:
    """Write `text` to `path` (making its directory); a failure is a DataError naming the path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise DataError(f"cannot write {path}: {exc.strerror or exc}{where}") from None
    return path
