"""Shared pieces of the training tests: a standard-library corpus, run settings, launching torchrun."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml

from opencodegen.data.build import BuildConfig, build_dataset
from opencodegen.tokenizer import train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TIMEOUT = 180


def build_corpus(root: Path) -> Path:
    """A tokenizer (~640 ids) in root/tok and packed 64-token sequences of 60 standard-library
    modules in root/data; returns root."""
    files = sorted(STDLIB.glob("*.py"))[:60]
    train_tokenizer(files, vocab_size=600).save_pretrained(root / "tok")
    build_dataset(BuildConfig(inputs=[str(f) for f in files], out=str(root / "data"), tokenizer=str(root / "tok"),
                              seq_len=64, val_fraction=0.1), progress=False)
    return root


@pytest.fixture(autouse=True)
def restore_threads():
    """Training sets torch's thread count; the next test gets the count it had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", name="corpus")
def corpus_fixture(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def run_settings(corpus: Path, out_dir: Path | None, **extra) -> dict:
    """A 20-step tiny-model run on the corpus (1 thread, no TensorBoard) with `extra` over it."""
    settings = dict(model="tiny", data=str(corpus / "data"), batch_size=8, micro_batch_size=4, lr=3e-3,
                    warmup_steps=5, max_steps=20, eval_every=10, eval_batches=2, log_every=1, save_every=5,
                    keep_last=4, threads=1, tensorboard=False, out_dir=str(out_dir))
    settings.update(extra)
    return settings


def write_config(path: Path, settings: dict) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def trajectory(out_dir: Path) -> list[tuple[str, int, float]]:
    """(split, step, loss) of every record of a run's metrics.jsonl."""
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["split"], r["step"], r["loss"]) for r in records]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str) -> list[str]:
    """The command line of a `torchrun --nproc_per_node nproc` launch on a free local port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *args]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run `cmd`; fail the test with the end of its output unless it exits 0."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
