"""A tiny random CodeGen model directory with a small trained tokenizer, for the generation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from opencodegen.config import CodeGenConfig
from opencodegen.model import CodeGenForCausalLM
from opencodegen.tokenizer import train_tokenizer

CORPUS = [
    "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n",
    "# Import libraries.\n\nimport numpy as np\n\nx = np.arange(10)\nprint(x.sum())\n",
    'class Point:\n    """A point."""\n\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n',
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)\n",
    "héllo wörld 😀 ünïcode\n",
] * 20


def make_model_dir(path: Path, seed: int = 0) -> Path:
    """Write a tiny random model (weights scaled up so its distributions are not flat) + tokenizer.

    The tokenizer is smaller than the embedding, so the rows from len(tokenizer) up are untrained.
    """
    tokenizer = train_tokenizer(CORPUS, vocab_size=400)
    config = CodeGenConfig.from_preset("tiny")
    config.eos_token_id = tokenizer.eos_token_id
    assert len(tokenizer) < config.vocab_size
    model = CodeGenForCausalLM(config)
    model.reset_parameters(seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def with_one_and_more_threads(compute):
    """`compute()` run with one thread and with at least two: (result, result)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = compute()
        torch.set_num_threads(max(2, threads))
        return one, compute()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are latency-bound: a second thread only adds synchronisation (slow on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
