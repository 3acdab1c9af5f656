"""Shared pieces of the serving tests: a tiny model served on 127.0.0.1 in a background thread."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch

from generation_helpers import make_model_dir
from opencodegen import load
from opencodegen.serving.app import create_app
from opencodegen.serving.background import BackgroundServer

MODEL_NAME = "tiny-test"


def tiny_model(directory: Path, favour: str | None = None):
    """A tiny random model (weights scaled so distributions are not flat) and its tokenizer.

    `favour`: text whose tokens get a large logit bias, so the model writes it over and over
    (long, predictable completions that no truncation rule cuts short).
    """
    model, tokenizer = load(str(make_model_dir(directory)))
    if favour is not None:
        with torch.no_grad():
            for token in tokenizer.encode(favour):
                model.lm_head.bias[token] += 40.0
    return model, tokenizer


@contextlib.contextmanager
def serve(model, tokenizer, **options) -> Iterator[BackgroundServer]:
    """The app on a free 127.0.0.1 port for the duration of the block."""
    with BackgroundServer(create_app(model, tokenizer, model_name=MODEL_NAME, **options)) as server:
        yield server


def sse_data(response: httpx.Response) -> list:
    """The JSON payloads of a server-sent event stream, up to `data: [DONE]` (which must come)."""
    events = []
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return events
        events.append(json.loads(line[len("data: ") :]))
    raise AssertionError("the stream ended without data: [DONE]")


def reference_logprobs(model, vocab: int, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1 from one full forward pass without a cache."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1, :vocab].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
