"""Shared pieces of the MTPB/session tests: the data file and fake generation objects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

# CI clones the repository with shared/ beside it: <root>/../shared/data/mtpb.jsonl
MTPB_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "mtpb.jsonl"


def mtpb_path() -> Path:
    if not MTPB_PATH.is_file():
        pytest.skip(f"MTPB data not found at {MTPB_PATH} (it lives in ../shared, never in the repo)")
    return MTPB_PATH


@dataclass(frozen=True)
class FakeParams:
    """Stands for SamplingParams: the fields the MTPB and session code replace."""

    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 0.2
    top_p: float = 0.95
    seed: int | None = 0
    truncate: str | None = None
    truncate_prompt: bool = False


@dataclass(frozen=True)
class FakeCompletion:
    text: str
    finish_reason: str = "stop"


class ScriptedGenerator:
    """A Generator stand-in whose completion is `reply(prompt, params, k)`; records every call."""

    def __init__(self, reply):
        self.reply = reply
        self.calls: list[tuple[list[str], FakeParams]] = []
        self.streams: list[tuple[list[str] | None, int | list[int]]] = []  # (keys, first_sample) of each call

    def generate(self, prompts, params, progress=None, *, keys=None, first_sample=0):
        self.calls.append((list(prompts), params))
        self.streams.append((keys, first_sample))
        return [[FakeCompletion(self.reply(p, params, k)) for k in range(params.n)] for p in prompts]
