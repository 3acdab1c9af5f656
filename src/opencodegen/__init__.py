"""opencodegen: Salesforce CodeGen in PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    import torch

    from opencodegen.model import CodeGenForCausalLM
    from opencodegen.tokenizer import CodeGenTokenizer


def load(
    path_or_hub_id: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    quantize: str | None = None,
) -> tuple[CodeGenForCausalLM, CodeGenTokenizer]:
    """Load a CodeGen model and its tokenizer from an HF directory or a hub id; `quantize`
    ("int8", "int4") quantizes the linear layers while loading (CPU; see quantize.py)."""
    from opencodegen.checkpoint import load_model
    from opencodegen.tokenizer import CodeGenTokenizer

    directory, model = load_model(path_or_hub_id, device=device, dtype=dtype, quantize=quantize)
    return model, CodeGenTokenizer.from_pretrained(directory)


__all__ = ["__version__", "load"]
