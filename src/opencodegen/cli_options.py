"""The options every `opencodegen` command shares, argparse types that reject a bad value with one
clear error, and the parser class that suggests the flag or command a typo meant.

Device policy (every command): `--device auto`, the default, is the CUDA GPU when torch sees one
(under torchrun the local rank's), else the CPU — as vLLM and transformers' device_map="auto" do, a
GPU is used without being asked for (opencodegen.devices applies it). Nothing here imports torch,
so that building the parsers (and `--help`) stays fast.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import re
from collections.abc import Callable
from typing import Any

from opencodegen import devices
from opencodegen.errors import ConfigError

_DEVICE = re.compile(r"[a-z_]+(:\d+)?")


def _number(text: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], requirement: str) -> Any:
    """`convert(text)` when it converts and `ok` holds, else the one error argparse prints with the flag."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, not {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, lambda v: 0 < v < float("inf"), "a number > 0")


def probability(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    return _number(text, float, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def device_name(text: str) -> str:
    """argparse type: "auto" or a torch device name (cpu, cuda, cuda:1, mps, ...); whether this
    machine has it is checked when the model loads."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N, mps, ..., not {text!r}")
    return text


def dtype_name(text: str) -> str | None:
    """argparse type: a dtype spelling as its canonical name; "auto" (the checkpoint's) is None."""
    if text == devices.AUTO:
        return None
    try:
        return devices.canonical_dtype(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"must be auto, {', '.join(devices.DTYPES)}, not {text!r}") from None


def add_model_argument(container: Any) -> None:
    """`--model` (on a parser or a mutually exclusive group)."""
    container.add_argument("--model", metavar="DIR|HUB_ID",
                           help="checkpoint directory, LoRA adapter directory (merged into its base) or hub id "
                           "(default: the embedded demo model)")


def add_model_options(parser: argparse.ArgumentParser, model_container: Any = None) -> None:
    """What a command that loads a model takes: --model, --device, --dtype, --quantize, --threads."""
    add_model_argument(model_container if model_container is not None else parser)
    parser.add_argument("--device", type=device_name, default=devices.AUTO,
                        help="auto (default: CUDA if available, else cpu), cpu, cuda, cuda:1, mps, ...")
    add_dtype_argument(parser, "weights dtype: auto (default: the checkpoint's; float16 becomes float32 on CPU)")
    add_quantize_argument(parser)
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")


def add_dtype_argument(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    parser.add_argument("--dtype", type=dtype_name, default=default, metavar="{auto,float32,bfloat16,float16}",
                        help=f"{help}; fp32, fp16, half and bf16 are accepted too")


def add_seed_argument(parser: argparse.ArgumentParser, default: int | None) -> None:
    """`--seed`: 0 where a run records results (the same seed, the same samples; resumable), None (a
    fresh seed each time) where a user samples interactively and asks again for another answer."""
    fresh = "a fresh one each run" if default is None else str(default)
    parser.add_argument("--seed", type=non_negative_int, default=default,
                        help=f"random seed; the same seed gives the same samples (default: {fresh})")


def add_json_argument(parser: Any, what: str) -> None:
    """`--json`: print `what` as JSON on standard output instead of text (every command alike)."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on standard output")


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    """The `--quantize` option of a command that samples from a model (see quantize.py)."""
    parser.add_argument("--quantize", choices=["int8", "int4"], default=None,
                        help="quantized linear layers for faster CPU decoding of float32 models: int8 (int8 weights, "
                        "dynamically quantized activations; a small cost in accuracy) or int4 (4.5 bits per linear "
                        "weight, 7x fewer bytes; faster still, a larger cost in accuracy; needs "
                        "AVX-512 VNNI and a C compiler)")


def add_isolation_argument(parser: argparse.ArgumentParser) -> None:
    """The `--isolation` option of a command that runs generated code."""
    parser.add_argument("--isolation", choices=["auto", "bwrap", "none"], default="auto",
                        help="how generated code is isolated: bwrap (the bubblewrap sandbox; refuse to run without "
                        "it), none (NO isolation: programs run as you, with your files and network; an explicit "
                        "opt-out) or auto (default: $OPENCODEGEN_ISOLATION if set, else bwrap)")


def module_doc(name: str) -> str | None:
    """The docstring of module `name`, read from its source without importing it (or its imports)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    with open(spec.origin, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read()))


class SuggestingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors for a mistyped sub-command, choice or flag add "did you mean"."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            names = [str(choice) for choice in action.choices]
            guess = difflib.get_close_matches(str(value), names, n=1)
            if guess:
                raise argparse.ArgumentError(action, f"invalid choice: {value!r}; did you mean {guess[0]!r}? "
                                             f"(choose from {', '.join(names)})")
        super()._check_value(action, value)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen_parser(parsed)
            message = f"unrecognized arguments: {' '.join(extras)}"
            options = [o for action in parser._actions for o in action.option_strings]
            for extra in extras:
                if extra.startswith("-"):
                    guess = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1)
                    if guess:
                        message += f"; did you mean {guess[0]}?"
                        break
            parser.error(message)
        return parsed

    def _chosen_parser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The innermost sub-command parser that `parsed` went through."""
        parser: argparse.ArgumentParser = self
        while True:
            sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            name = getattr(parsed, sub.dest, None) if sub is not None else None
            if name is None or name not in sub.choices:
                return parser
            parser = sub.choices[name]
