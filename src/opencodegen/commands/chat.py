"""`opencodegen chat`: write a program turn by turn with a model, in the terminal or in a pipe.

Each line is an instruction: the model writes the code for it, the code runs in a persistent
sandboxed interpreter and its output is shown. Lines starting with `/` are commands (/help).
When stdin is not a terminal the lines are read from it (a script); when stdout is not a
terminal the finished program is written to stdout and everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TextIO

from opencodegen import default_model
from opencodegen.cli_options import (
    add_isolation_argument,
    add_model_options,
    add_seed_argument,
    positive_float,
    positive_int,
    probability,
)
from opencodegen.errors import GenerationError, OpenCodeGenError
from opencodegen.synthesis.controls import visible_controls
from opencodegen.user_cache import user_cache_dir

HELP = """\
Type an instruction (one step of the program) and press Enter. Commands:
  /undo          remove the last turn (the interpreter state is rolled back)
  /retry         let the model write the last turn again
  /edit [N]      replace the code of turn N (default: the last); end the code with a line /end
  /code          add a turn whose code you type (instruction first, then code, then /end)
  /run           run the whole program again from scratch
  /show          print the program so far
  /save FILE     save the session as JSON (reload it with --load FILE)
  /export FILE   write the program as a runnable .py file
  /help          this text
  /quit          leave (Ctrl-D too)"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat",
        help="write a program turn by turn with a model; each turn runs in a sandboxed interpreter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    p.add_argument("--temperature", type=float, default=0.2, help="sampling temperature (default 0.2)")
    p.add_argument("--top-p", type=probability, default=0.95, help="nucleus top-p (default 0.95)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256, help="token budget per turn (default 256)")
    add_seed_argument(p, default=None)
    p.add_argument("--timeout", type=positive_float, default=30.0, help="seconds a turn may run (default 30)")
    p.add_argument("--load", metavar="SESSION.json", help="continue a saved session")
    add_isolation_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import functools

    import opencodegen
    from opencodegen.execution.sandbox import resolve_isolation
    from opencodegen.generation import Generator, SamplingParams
    from opencodegen.synthesis.interpreter import Interpreter
    from opencodegen.synthesis.session import Session

    isolation = resolve_isolation(args.isolation)  # refuses here, before the model loads
    model, tokenizer = opencodegen.load(default_model.resolve(args.model), device=args.device, dtype=args.dtype,
                                        quantize=args.quantize)
    params = SamplingParams(n=1, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, truncate="codegen")
    generator = Generator(model, tokenizer)
    factory = functools.partial(Interpreter, timeout=args.timeout, isolation=isolation.request)
    if args.load:
        session = Session.load(args.load, generator, params, interpreter_factory=factory)
    else:
        session = Session(generator, params, interpreter_factory=factory)
    print(f"isolation: {isolation.mode}", file=sys.stderr, flush=True)
    with session:
        return Chat(session, sys.stdin, sys.stdout).loop()


class Chat:
    """The read-eval-show loop over a Session; stdin/stdout may be terminals or pipes."""

    def __init__(self, session: Any, stdin: TextIO, stdout: TextIO):
        from rich.console import Console

        self.session = session
        self.interactive = stdin.isatty()
        self.program_to_stdout = not stdout.isatty()
        self.stdin, self.stdout = stdin, stdout
        self.console = Console(file=sys.stderr if self.program_to_stdout else stdout, highlight=False)
        self._lines = self._read_lines()
        self.commands: dict[str, Callable[[str], None]] = {
            "/undo": self._undo, "/retry": self._retry, "/edit": self._edit, "/code": self._code,
            "/run": self._rerun, "/show": self._show, "/save": self._save, "/export": self._export,
            "/help": lambda _: self.console.print(HELP),
        }

    # ----------------------------------------------------------------------------- input

    def _read_lines(self) -> Iterator[str]:
        if self.interactive:
            history = _enable_readline()
            while True:
                try:
                    yield input("» ")
                except EOFError:
                    break
                finally:
                    history()
        else:
            for line in self.stdin:
                yield line.rstrip("\n")

    def _block(self, what: str) -> str:
        """Lines up to a line `/end` (or the end of the input)."""
        if self.interactive:
            self.console.print(f"[dim]{what}; finish with a line /end[/dim]")
        lines = []
        for line in self._lines:
            if line.strip() == "/end":
                break
            lines.append(line)
        return "\n".join(lines)

    # ----------------------------------------------------------------------------- loop

    def loop(self) -> int:
        if self.interactive:
            self.console.print("[bold]opencodegen chat[/bold] — one instruction per line, /help for commands")
        if self.session.turns:
            self._show("")
        for line in self._lines:
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                break
            name, _, rest = text.partition(" ")
            if name.startswith("/") and name not in self.commands:
                self._error(f"unknown command {name} (/help lists them)")
                continue
            try:
                if name.startswith("/"):
                    self.commands[name](rest.strip())
                else:
                    with self._busy(f"turn {len(self.session.turns) + 1}: writing and running the code"):
                        turn = self.session.add_turn(text)
                    self._turn(turn, len(self.session.turns))
            except (OpenCodeGenError, OSError) as exc:  # one line, and the session goes on
                self._error(str(exc))
        if self.program_to_stdout:
            self.stdout.write(self.session.program())
            self.stdout.flush()
        return 0

    # ----------------------------------------------------------------------------- display

    def _say(self, text: str, style: str | None = None) -> None:
        """Print text from the sandbox, the model or the user: no markup, controls made visible."""
        self.console.print(visible_controls(text), style=style, markup=False, highlight=False, soft_wrap=True)

    def _error(self, message: str) -> None:
        """One red line, whatever the message holds."""
        self._say("error: " + " ".join(visible_controls(message, keep="").split()), style="red")

    def _busy(self, what: str) -> AbstractContextManager[Any]:
        """A spinner while the model writes (or the sandbox runs), on a terminal only."""
        from rich.text import Text

        if not (self.interactive and self.console.is_terminal):
            return contextlib.nullcontext()
        return self.console.status(Text(visible_controls(what, keep="")), spinner="dots")

    def _turn(self, turn: Any, number: int) -> None:
        from rich.panel import Panel
        from rich.syntax import Syntax
        from rich.text import Text

        code = Syntax(visible_controls(turn.code) or "# (no code)", "python", theme="monokai", line_numbers=False)
        title = Text(f"turn {number}: {visible_controls(turn.instruction, keep='')}")
        self.console.print(Panel(code, title=title, title_align="left"))
        out = turn.output
        if out.stdout:
            self._say(out.stdout.rstrip("\n"))
        if out.stderr:
            self._say(out.stderr.rstrip("\n"), style="yellow")
        if out.value is not None:
            self._say(f"=> {out.value}", style="cyan")
        if out.error:
            self._say(out.error.rstrip("\n"), style="red")

    # ----------------------------------------------------------------------------- commands

    def _undo(self, _: str) -> None:
        turn = self.session.undo()
        self._say(f"undone: {turn.instruction} ({len(self.session.turns)} turns left)")

    def _retry(self, _: str) -> None:
        with self._busy(f"turn {len(self.session.turns)}: writing the code again"):
            turn = self.session.regenerate_turn(-1)
        self._turn(turn, len(self.session.turns))

    def _edit(self, arg: str) -> None:
        if not self.session.turns:
            raise GenerationError("no turn to edit")
        try:
            number = int(arg) if arg else len(self.session.turns)
        except ValueError:
            raise GenerationError(f"/edit takes a turn number, not {arg!r}") from None
        if not 1 <= number <= len(self.session.turns):
            raise GenerationError(f"no turn {number} (the session has {len(self.session.turns)})")
        if self.interactive:
            self._say(self.session.turns[number - 1].code)
        code = self._block(f"new code for turn {number}")
        with self._busy(f"running turn {number} and the turns after it"):
            self.session.edit_turn(number - 1, code)
        for i in range(number - 1, len(self.session.turns)):  # later turns ran again too
            self._turn(self.session.turns[i], i + 1)

    def _code(self, arg: str) -> None:
        instruction = arg or next(self._lines, "").strip()
        code = self._block("code of the turn")
        with self._busy(f"turn {len(self.session.turns) + 1}: running the code"):
            turn = self.session.add_turn(instruction, code)
        self._turn(turn, len(self.session.turns))

    def _rerun(self, _: str) -> None:
        with self._busy("running the whole program again"):
            self.session.rerun()
        for i, turn in enumerate(self.session.turns):
            self._turn(turn, i + 1)

    def _show(self, _: str) -> None:
        from rich.syntax import Syntax

        self.console.print(Syntax(visible_controls(self.session.program()), "python", theme="monokai"))

    def _save(self, arg: str) -> None:
        path = self.session.save(_path_argument(arg, "/save"))
        self._say(f"saved the session to {path}")

    def _export(self, arg: str) -> None:
        path = self.session.export(_path_argument(arg, "/export"))
        self._say(f"wrote the program to {path}")


def _path_argument(arg: str, command: str) -> Path:
    if not arg:
        raise GenerationError(f"{command} needs a file name")
    return Path(arg).expanduser()


def _enable_readline() -> Callable[[], None]:
    """Line editing and a persistent history for the terminal; returns the history saver."""
    try:
        import readline
    except ImportError:
        return lambda: None
    path = user_cache_dir() / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError:
            pass

    return save
