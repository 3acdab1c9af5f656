"""Training: `TrainConfig` (run settings), `Trainer` (DDP / FSDP2 loop with exact resume), and
checkpoint import (JAXFORMER) and export (HF CodeGen directories).

Modules: config, optim, loss, distributed, checkpointing, metrics, trainer, jaxformer.
"""

from opencodegen.training.config import TrainConfig

__all__ = ["TrainConfig"]
