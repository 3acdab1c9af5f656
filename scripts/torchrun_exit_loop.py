"""Launch N consecutive 2-process `torchrun ... opencodegen train` runs (tiny model, CPU, gloo)
and count how many exit 0; alternates DDP and FSDP2. The issue-21 check for clean exits.

    PYTHONPATH=src python scripts/torchrun_exit_loop.py --runs 20 [--steps 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_corpus(root: Path) -> Path:
    """A 600-id tokenizer and 64-token sequences of 60 standard-library modules."""
    from opencodegen.data.build import BuildConfig, build_dataset
    from opencodegen.tokenizer import train_tokenizer

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60]
    train_tokenizer(files, vocab_size=600).save_pretrained(root / "tok")
    build_dataset(BuildConfig(inputs=[str(f) for f in files], out=str(root / "data"), tokenizer=str(root / "tok"),
                              seq_len=64, val_fraction=0.1), progress=False)
    return root / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--keep", help="directory for the runs and their logs (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="torchrun-exit-"))
    root.mkdir(parents=True, exist_ok=True)
    data = build_corpus(root)
    settings = dict(model="tiny", data=str(data), batch_size=8, micro_batch_size=4, warmup_steps=2,
                    max_steps=args.steps, eval_every=2, eval_batches=2, log_every=1, save_every=2, keep_last=2)
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    failures = []
    for i in range(args.runs):
        strategy = ("ddp", "fsdp")[i % 2]
        out = root / f"run-{i:02d}-{strategy}"
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(free_port()), "-m", "opencodegen.cli", "train", "--config", str(config),
             f"strategy={strategy}", f"out_dir={out}"],
            capture_output=True, text=True,
        )
        (root / f"run-{i:02d}-{strategy}.log").write_text(proc.stdout + proc.stderr)
        aborted = "terminate called" in proc.stderr or "SIGABRT" in proc.stderr
        print(f"run {i + 1:2d} {strategy:4s} exit {proc.returncode}" + (" (abort at exit)" if aborted else ""),
              flush=True)
        if proc.returncode != 0:
            failures.append(i)
    print(f"{args.runs - len(failures)} of {args.runs} runs exited 0; logs in {root}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
