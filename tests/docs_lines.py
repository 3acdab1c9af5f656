"""The command lines and code blocks of README.md and docs/*.md, for the tests that parse them
(test_docs_commands.py) and run them (test_docs_run.py)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SHELL = ("", "bash", "sh", "shell", "console")
# the words after `opencodegen` (maybe behind VAR=value assignments) or after `-m opencodegen[.cli]`
_OPENCODEGEN = re.compile(r"^(?:(?:\w+=\S*\s+)*opencodegen|.*-m opencodegen(?:\.cli)?)\s+(.*)$")
_REDIRECT = re.compile(r"\s*([<>])\s*(\S+)")


@dataclass(frozen=True)
class DocLine:
    """One command of a shell block: continuation lines joined, whitespace collapsed, without its
    trailing `# comment`; one side of a `&&`."""

    where: str  # the doc's file name
    text: str

    @property
    def is_torchrun(self) -> bool:
        return self.text.startswith("torchrun ")

    def arguments(self, variables: dict[str, str] | None = None) -> list[str] | None:
        """The words given to opencodegen, without redirections and a trailing `&`; None when the
        line does not run opencodegen. `$VAR` / `${VAR}` become `variables[VAR]` when given."""
        match = _OPENCODEGEN.match(self.text)
        if match is None:
            return None
        words = _REDIRECT.sub("", match.group(1)).strip().rstrip("&;").strip()
        if variables is not None:
            words = re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m.group(1)], words)
        return shlex.split(words)

    def launcher(self) -> list[str] | None:
        """torchrun's own words (between `torchrun` and `-m`); None when the line is no torchrun
        launch or leaves them to the reader (`torchrun ... -m opencodegen.cli ...`)."""
        words = shlex.split(self.text.split(" -m ", 1)[0])[1:] if self.is_torchrun else ["..."]
        return None if "..." in words else words

    def environment(self) -> dict[str, str]:
        """The VAR=value assignments in front of `opencodegen`."""
        return dict(re.findall(r"(\w+)=(\S*)\s", self.text.split("opencodegen", 1)[0]))

    def redirect(self, symbol: str) -> str | None:
        """The file of the line's `<` (stdin) or `>` (stdout) redirection, if any."""
        return next((path for found, path in _REDIRECT.findall(self.text) if found == symbol), None)


def documented_blocks(languages: tuple[str, ...]) -> list[tuple[str, str]]:
    """(doc file name, text) of every fenced block of README.md and docs/*.md in one of `languages`."""
    return [(doc.name, block) for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
            for language, block in FENCE.findall(doc.read_text(encoding="utf-8")) if language in languages]


def documented_lines() -> list[DocLine]:
    """Every command of a shell block of README.md and docs/*.md, in the docs' order."""
    found = []
    for where, block in documented_blocks(SHELL):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                text = " ".join(part.split(" #", 1)[0].split())
                if text:
                    found.append(DocLine(where, text))
    return found


def documented_commands() -> list[DocLine]:
    """The lines that run opencodegen, directly or under torchrun. Lines whose opencodegen
    arguments hold a `...` placeholder are sketches, not commands, and are left out."""
    return [line for line in documented_lines()
            if (match := _OPENCODEGEN.match(line.text)) is not None and "..." not in match.group(1)]
