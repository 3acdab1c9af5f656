"""Training: `TrainConfig` (run settings), `Trainer` (DDP / FSDP2 loop with exact resume) and
its resumable checkpoints (JAXFORMER import and HF export live in `opencodegen.checkpoint`).

Modules: config, optim, loss, distributed, checkpointing, metrics, signals, trainer.
"""

from opencodegen.training.config import TrainConfig

__all__ = ["TrainConfig"]
