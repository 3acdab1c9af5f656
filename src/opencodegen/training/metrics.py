"""Training metrics: model FLOPs and MFU, a resumable JSONL log (+ TensorBoard), the loss curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from opencodegen.config import CodeGenConfig
from opencodegen.io import ResultStore, write_atomic

# Dense bf16 peak of one device, TFLOP/s, matched against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0),
    ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
)


def flops_per_token(config: CodeGenConfig, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward, no recomputation):
    6 · (parameters outside the embedding lookup) + 12 · n_layer · n_embd · seq_len (attention)."""
    dense = config.num_parameters() - config.vocab_size * config.n_embd
    return 6.0 * dense + 12.0 * config.n_layer * config.n_embd * seq_len


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """Peak FLOP/s of one device: the configured value, else a known GPU's bf16 peak, else None."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in name:
                return tflops * 1e12
    return None


class MetricsLog:
    """`{out_dir}/metrics.jsonl`: one record per logged train step and per validation.

    Records are keyed by (split, step). On resume from step N, records after N (written by the
    interrupted run) are dropped first, so the file always shows the trajectory that led to the
    current state. Only the main process writes; TensorBoard mirrors the numbers when installed.
    """

    def __init__(self, out_dir: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.jsonl"
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            self._truncate_after(resume_step)
        self.store = ResultStore(self.path, ("split", "step"))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line of the killed run
            if isinstance(record, dict) and record.get("step", step + 1) <= step:
                kept.append(line + "\n")
        write_atomic(self.path, "".join(kept))

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.store.records

    def log(self, record: dict[str, Any]) -> None:
        self.store.append(record)
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "split"):
                    self.tb.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_losses(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Train and validation cross-entropy against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split, style in (("train", "-"), ("val", "o-")):
        points = [(r["step"], r["loss"]) for r in records if r.get("split") == split]
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, style, label=f"{split} loss", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
