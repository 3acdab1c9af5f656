"""Export to the GPT-J layout (GPTJForCausalLM: separate q/k/v, the same rotary and parallel
residual), the layout vLLM, TGI and CTranslate2 serve."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from opencodegen.checkpoint.files import write_safetensors
from opencodegen.checkpoint.hf import DTYPE_NAMES, exported_state
from opencodegen.devices import parse_dtype
from opencodegen.model import CodeGenForCausalLM

if TYPE_CHECKING:
    from opencodegen.tokenizer import CodeGenTokenizer

# lm_head bias of an exported embedding row that no token names: exp() of it is 0 next to any real logit
UNUSED_ROW_BIAS = -1e4


def _gptj_qkv(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    prefix = name.removesuffix("qkv.weight")
    return {f"{prefix}{part}_proj.weight": chunk for part, chunk in zip(("q", "k", "v"), weight.chunk(3))}


def export_gptj(
    model: CodeGenForCausalLM,
    directory: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = 4 << 30,
    tokenizer: CodeGenTokenizer | None = None,
) -> None:
    """Write the model as a GPTJForCausalLM checkpoint (separate q/k/v, same rotary and
    parallel residual), the layout vLLM, TGI and CTranslate2 serve.

    With `tokenizer`, its files go along, padded with placeholder tokens to one per embedding
    row (CTranslate2's GPT-J converter requires it; CodeGen has 50295 tokens for 51200 rows),
    and the lm_head bias of the rows no real token names is UNUSED_ROW_BIAS, so that no
    consumer samples a placeholder and every consumer's log-probabilities are those of our
    engine, which never samples those rows either.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = parse_dtype(dtype) if dtype is not None else model.dtype
    state = exported_state(model, dtype, _gptj_qkv)
    c = model.config
    if tokenizer is not None:
        if len(tokenizer) < c.vocab_size:
            state["lm_head.bias"] = state["lm_head.bias"].clone()
            state["lm_head.bias"][len(tokenizer) :] = UNUSED_ROW_BIAS
        tokenizer.padded_to(c.vocab_size).save_pretrained(directory)
    write_safetensors(state, directory, max_shard_bytes)
    config = {
        "model_type": "gptj",
        "architectures": ["GPTJForCausalLM"],
        "vocab_size": c.vocab_size,
        "n_positions": c.n_positions,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "rotary_dim": c.rotary_dim,
        "n_inner": c.n_inner,
        "activation_function": c.activation_function,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "initializer_range": c.initializer_range,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "tie_word_embeddings": False,
        "torch_dtype": DTYPE_NAMES.get(dtype),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
