"""Where a completion ends: stop strings, CodeGen's truncation rules and the HumanEval stop list.

Everything here works on the decoded text of the newly generated tokens only (never the prompt).
:class:`StopState` follows one sequence while it is generated: it receives text deltas, says when
the completion is finished and which prefix of the text is final (safe to stream).
"""

from __future__ import annotations

import re

from opencodegen.errors import GenerationError

#: The usual stop sequences for HumanEval (completing a function body).
HUMANEVAL_STOPS: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

#: Names accepted by ``SamplingParams.truncate``.
TRUNCATE_PRESETS: tuple[str, ...] = ("codegen", "humaneval")

_EOT = "<|endoftext|>"
_PRINT = re.compile(r"^print", re.MULTILINE)
_DEF = re.compile(r"^def", re.MULTILINE)
# The earliest of these ends a completion (one alternation finds the earliest start of any of them).
_TERMINAL = re.compile("|".join(("^#", re.escape(_EOT), "^'''", '^"""', "\n\n\n")), re.MULTILINE)
# Every pattern is at most this long, so text appended later can only create matches that start
# at least len(text) - (_LONGEST - 1) characters into it; a cut before that is final.
_LONGEST = len(_EOT)


def _nth_start(pattern: re.Pattern[str], text: str, n: int, end: int) -> int | None:
    """Start of the n-th (1-based) match of `pattern` in text[:end], or None."""
    for count, match in enumerate(pattern.finditer(text, 0, end), start=1):
        if count == n:
            return match.start()
    return None


def codegen_cut(text: str) -> int:
    """Length of the prefix kept by the `truncate` of CodeGen's released samplers.

    Cut at the second top-level ``print``, then at the second top-level ``def``, then at the
    earliest of: a line starting with ``#``, ``<|endoftext|>``, a line starting with ``'''`` or
    ``\"\"\"``, three newlines in a row. All patterns are anchored per line.
    """
    end = len(text)
    for pattern in (_PRINT, _DEF):
        second = _nth_start(pattern, text, 2, end)
        if second is not None:
            end = second
    terminal = _TERMINAL.search(text, 0, end)
    return terminal.start() if terminal else end


def truncate_codegen(text: str) -> str:
    """The completion as CodeGen's reference sampler truncates it."""
    return text[: codegen_cut(text)]


def preset_stops(truncate: str | None) -> tuple[str, ...]:
    """Stop strings a truncation preset adds ("humaneval": :data:`HUMANEVAL_STOPS`)."""
    if truncate is not None and truncate not in TRUNCATE_PRESETS:
        raise GenerationError(f"unknown truncation preset {truncate!r}; use one of {', '.join(TRUNCATE_PRESETS)} or none")
    return HUMANEVAL_STOPS if truncate == "humaneval" else ()


class StopState:
    """Decoded text of one generated sequence and where it ends.

    `stops`: strings that end the completion (cut before the earliest one, found across token
    boundaries); `codegen`: apply :func:`truncate_codegen`, and finish as soon as its cut can no
    longer move (more text only adds matches, none starting before the last `_LONGEST - 1` chars).
    """

    def __init__(self, stops: tuple[str, ...] = (), codegen: bool = False) -> None:
        self.text = ""
        self.done = False
        self._stops = stops
        self._codegen = codegen
        self._stop_len = max((len(s) for s in stops), default=0)
        self._end: int | None = None  # stop-string cut, once found
        self._emitted = 0

    def feed(self, delta: str) -> bool:
        """Append newly decoded text; return True once the completion is finished."""
        if self.done or not delta:
            return self.done
        start = max(0, len(self.text) - self._stop_len + 1)
        self.text += delta
        found = [i for i in (self.text.find(s, start) for s in self._stops) if i >= 0]
        if found:
            self._end = min(found)
            self.done = True
        elif self._codegen and len(self.text) - codegen_cut(self.text) >= _LONGEST:
            self.done = True
        return self.done

    def finish(self) -> None:
        """No more text will come (EOS or the token budget)."""
        self.done = True

    @property
    def final_text(self) -> str:
        """The completion cut by the stop strings, then by the CodeGen rules; final once `done`."""
        text = self.text if self._end is None else self.text[: self._end]
        return truncate_codegen(text) if self._codegen else text

    @property
    def cut(self) -> bool:
        """True when stop strings or truncation removed text (the completion stopped itself)."""
        return len(self.final_text) < len(self.text)

    def _stop_prefix_len(self) -> int:
        """Length of the longest end of the text that could begin a stop string."""
        for k in range(min(self._stop_len - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self._stops):
                return k
        return 0

    def take_delta(self) -> str:
        """Text that became final since the last call (held back while a stop might still match)."""
        if self.done:
            safe = len(self.final_text)
        else:
            safe = len(self.text) - self._stop_prefix_len()
            if self._codegen:
                safe = min(safe, len(self.text) - (_LONGEST - 1), codegen_cut(self.text))
        if safe <= self._emitted:
            return ""
        delta = self.text[self._emitted : safe]
        self._emitted = safe
        return delta
