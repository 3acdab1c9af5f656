"""Checkpoints in and out: `files` (finding a checkpoint and reading or writing its weight files),
`hf` (the Hugging Face CodeGen layout: load and save), `lora` (LoRA adapters: the layers, merging,
peft's file layout), `gptj` (export to the GPT-J layout) and `jaxformer` (import of CodeGen's
original JAX training checkpoints).

`load_model`, `save_model` and `resolve_checkpoint` are the entry points the rest of the package
uses.
"""

from opencodegen.checkpoint.files import resolve_checkpoint
from opencodegen.checkpoint.hf import load_model, save_model

__all__ = ["load_model", "resolve_checkpoint", "save_model"]
