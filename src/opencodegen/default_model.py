"""The embedded default model: a small demo model trained by this project's own pipeline.

It ships inside the package (``assets/default-model``, an HF CodeGen directory in float16, with its
model card README.md) so that every command works offline out of the box. Commands use it when
no ``--model`` is given, or for ``--model default``; they say so on standard error.
"""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "default"
DIRECTORY = Path(__file__).parent / "assets" / "default-model"
BANNER = (
    "note: using the embedded default model, a small DEMO model (18.7M parameters, trained for 9 minutes on "
    "one GPU, on Python code found on any machine; numbers in {card}). It writes Python-shaped code but solves "
    "few tasks. For real results pass --model Salesforce/codegen-350M-mono (online, or from the local HF cache) "
    "or a local checkpoint directory."
)


def resolve(model: str | None) -> str:
    """`model`, or the embedded model's directory for None / "default" (announced on stderr)."""
    if model is not None and model != NAME:
        return model
    print(BANNER.format(card=DIRECTORY / "README.md"), file=sys.stderr)
    return str(DIRECTORY)
