"""The runnable sub-commands of the real `opencodegen` parser (imports no torch: used in subprocesses)."""

from __future__ import annotations

import argparse

from opencodegen.cli import build_parser


def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every runnable sub-command of the real parser, by its words ("eval humaneval")."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        sub = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not sub:
            found[" ".join(words)] = parser
        for action in sub:
            for name, child in action.choices.items():
                walk(child, (*words, name))

    walk(build_parser(), ())
    return found
