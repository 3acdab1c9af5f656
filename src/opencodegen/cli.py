"""`opencodegen` command line: one sub-command per module in `opencodegen.commands`.

Each module there defines `register(subparsers)`, which adds its parser and sets
`func=run` (a callable taking the parsed namespace and returning an exit code). Building the
parsers imports no torch: commands import heavy modules inside their runners.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from opencodegen import __version__, commands, devices
from opencodegen.cli_options import SuggestingParser
from opencodegen.errors import OpenCodeGenError


def build_parser() -> argparse.ArgumentParser:
    parser = SuggestingParser(
        prog="opencodegen",
        description="CodeGen models: generate, evaluate (HumanEval, MTPB), chat, train, serve.",
    )
    parser.add_argument("--version", action="version", version=f"opencodegen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"opencodegen.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        devices.set_threads(getattr(args, "threads", None))
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OpenCodeGenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
