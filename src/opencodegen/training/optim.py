"""CodeGen's optimizer: AdamW with decay on weight matrices only, and warm-up + cosine to lr/10.

Weight decay goes to every parameter with two or more dimensions: the attention and MLP
matrices, `lm_head.weight` and `transformer.wte.weight`. JAXFORMER's embedding is a haiku
Linear whose matrix its optimizer decays (it excludes only LayerNorm parameters and biases),
so decaying `wte` reproduces CodeGen. Biases and LayerNorm gains/offsets are not decayed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from opencodegen.training.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices (decayed) and vectors (biases, LayerNorm; not decayed)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `model`'s parameters with the run's betas, eps, lr and decay (decoupled,
    lr-scaled). The fused implementation (one pass over each tensor; CPU and CUDA) is several
    times faster than the default multi-tensor one on CPU, where the update is memory-bound."""
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=True,
    )


class WarmupCosine:
    """The learning rate of the update of step `s` (0-based): lr · (s+1)/warmup during warm-up,
    then a cosine from lr to lr · min_ratio at `total_steps`, constant after.

    A run with a time budget (`max_time`) passes the fraction of it spent: the cosine then
    follows the larger of the step and time fractions, so it reaches its end when the budget does.

    Stateless: the step counter of the run is the only state, so a resumed run follows the
    schedule of its current config.
    """

    def __init__(self, lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.lr = lr
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    @classmethod
    def from_config(cls, config: TrainConfig) -> WarmupCosine:
        return cls(config.lr, config.warmup_steps, config.max_steps, config.min_lr_ratio)

    def __call__(self, step: int, time_fraction: float = 0.0) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max((step - self.warmup_steps) / span, time_fraction))
        return self.lr * (self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def apply(self, optimizer: torch.optim.Optimizer, step: int, time_fraction: float = 0.0) -> float:
        """Set every parameter group's lr for step `step`; returns it."""
        lr = self(step, time_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, float]:
        return dict(vars(self))
