"""CLI sub-commands; every public module here defines `register(subparsers)`."""

from __future__ import annotations

import argparse


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    """The `--quantize` option of a command that samples from a model (see generation/quantize.py)."""
    parser.add_argument("--quantize", choices=["int8", "int4"], default=None,
                        help="quantized linear layers for faster CPU decoding of float32 models: int8 (int8 weights, "
                        "dynamically quantized activations; about 2-3x faster, a small cost in accuracy) or int4 "
                        "(4.5 bits per linear weight, 7x fewer bytes; 3-4x faster, a larger cost in accuracy; needs "
                        "AVX-512 VNNI and a C compiler)")  # fmt: skip


def add_isolation_argument(parser: argparse.ArgumentParser) -> None:
    """The `--isolation` option of a command that runs generated code."""
    parser.add_argument("--isolation", choices=["auto", "bwrap", "none"], default="auto",
                        help="how generated code is isolated: bwrap (the bubblewrap sandbox; refuse to run without "
                        "it), none (NO isolation: programs run as you, with your files and network; an explicit "
                        "opt-out) or auto (default: $OPENCODEGEN_ISOLATION if set, else bwrap)")  # fmt: skip

