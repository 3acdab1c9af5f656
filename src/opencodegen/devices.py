"""Device and dtype names from users into torch objects, with one clear error for a bad one.

Device policy, for every command and `opencodegen.checkpoint.load_model(device=None)`: "auto"
is this process's CUDA GPU when torch sees one (under torchrun, the local rank's), else the CPU.
Torch is imported inside the functions, so that the CLI's parsers can name the accepted
spellings without loading it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from opencodegen.errors import ConfigError

if TYPE_CHECKING:
    import torch

AUTO = "auto"
#: accepted dtype spellings and the torch dtype each names
DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
                 "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
DTYPES = ("float32", "bfloat16", "float16")


def canonical_dtype(name: str) -> str:
    """The canonical name ("float32", "bfloat16", "float16") of a dtype spelling."""
    try:
        return DTYPE_ALIASES[str(name).lower().removeprefix("torch.")]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; use {', '.join(DTYPES)} (or auto: the checkpoint's)") from None


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or one of its spellings (DTYPE_ALIASES)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, canonical_dtype(dtype))


def auto_device() -> str:
    """The policy's pick: CUDA (LOCAL_RANK's GPU under torchrun) when available, else "cpu"."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and local_rank.isdigit() and int(local_rank) < torch.cuda.device_count():
        return f"cuda:{local_rank}"
    return "cuda"


def parse_device(device: torch.device | str | None) -> torch.device:
    """A torch.device that this machine can use, or a ConfigError saying why not.
    None and "auto" follow the device policy (module docstring)."""
    import torch

    if device is None or device == AUTO:
        device = auto_device()
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {str(device)!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"device {str(device)!r} requested, but {build}; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(device)!r} requested, but only {torch.cuda.device_count()} GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested, but MPS is not available here")
    return device


def set_threads(threads: int | None) -> None:
    """Torch's intra-op CPU threads (None: torch's own choice)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
