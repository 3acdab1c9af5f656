"""Control characters made visible: text from a sandbox or a user must not drive the terminal
(escape sequences) or break out of a comment (line breaks) where it is shown or written."""

from __future__ import annotations

import functools
import re

# Every character Python's tokenizer or str.splitlines() ends a line at.
LINE_BREAKS = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# C0 and C1 controls, DEL, line/paragraph separators, and the bidirectional overrides that reorder
# what a reader sees.
_CONTROLS = (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))


@functools.lru_cache(maxsize=8)
def _table(keep: str) -> dict[int, str]:
    return {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROLS if chr(c) not in keep}


def visible_controls(text: str, keep: str = "\n\t") -> str:
    """`text` with each control character (except those in `keep`) written as an escape: ESC
    becomes the four characters `\\x1b`."""
    return text.translate(_table(keep))


def comment_lines(text: str) -> list[str]:
    """`text` as lines that hold no control character but tabs: split at every line break, the
    other controls escaped."""
    return [visible_controls(line, keep="\t") for line in LINE_BREAKS.split(text)]
