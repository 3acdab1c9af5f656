"""CLI sub-commands; every public module here defines `register(subparsers)`."""

from __future__ import annotations

import argparse


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    """The `--quantize` option of a command that samples from a model (see generation/quantize.py)."""
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="int8 linear layers (int8 weights, dynamically quantized activations): about 2-3x "
                        "faster decoding on CPU, at a small cost in accuracy (float32 models, CPU only)")  # fmt: skip
