"""The multi-turn program format of CodeGen: a prefix, then per turn a comment and its code.

```
# Import libraries.

import numpy as np

# <instruction of turn 1>
<code of turn 1>

# <instruction of turn 2>
...
```
MTPB evaluation and interactive sessions both build their prompts and programs here.
"""

from __future__ import annotations

from collections.abc import Iterable

from opencodegen.synthesis.controls import comment_lines

PREFIX = "# Import libraries.\n\nimport numpy as np\n\n"


def turn_prompt(instruction: str) -> str:
    """The comment line(s) that state one turn: `"# " + instruction + "\\n"`.

    Continuation lines of a multi-line instruction that do not start with `#` get a `# `
    so the program stays valid Python; MTPB prompts (whose continuation lines already are
    comments) come out exactly as in the reference sampler. Every other line break (`\\r`,
    form feed, ...) also starts a new comment line and other control characters are escaped,
    so an instruction is never code.
    """
    first, *rest = comment_lines(instruction)
    lines = [first] + [line if line.lstrip(" \t").startswith("#") else "# " + line for line in rest]
    return "# " + "\n".join(lines) + "\n"


def append_turn(history: str, instruction: str, code: str) -> str:
    """The history after one more turn: its comment, its code and a blank line."""
    return history + turn_prompt(instruction) + code + "\n\n"


def build_program(turns: Iterable[tuple[str, str]], prefix: str = PREFIX) -> str:
    """The whole program of a list of (instruction, code) turns."""
    history = prefix
    for instruction, code in turns:
        history = append_turn(history, instruction, code)
    return history
