"""Import of JAXFORMER (CodeGen's TPU training library) checkpoints into HF CodeGen directories.

Layout read: ``{ckpt_dir}/{step}/model/{process_index}.npz`` and ``{step}/ckpt.json``. An npz
is ``np.savez(f, *leaves)`` of ``jax.tree_flatten(state["model"])``: arrays ``arr_0``,
``arr_1``, … in tree order; bf16 leaves are stored as raw 2-byte voids (``V2``). Every process
file holds full (unsharded) arrays, so process 0's file suffices.

Assumed tree (haiku module names, params of each `hk.Linear` w [in, out] and b [out], of each
`hk.LayerNorm` scale and offset). `jax.tree_flatten` visits dict keys in sorted order, which
gives the leaf order of `LEAVES`; per-layer parameters carry a leading n_layer axis (the blocks
were initialised and applied with `lax.scan`).

Mapping to the HF CodeGen names: every matrix is transposed ([in, out] -> [out, in]); per-layer
arrays are unstacked into ``transformer.h.{i}``; the embedding is a biased Linear over one-hot
inputs, so ``wte.weight = W + b`` (the bias added to every row); the fused qkv keeps JAXFORMER's
layout (``mp_num`` shards of Q, V, K), where mp_num is the model-parallel degree the run used
(`tpu_cores` of its config: 8 on TPU-v3 configs, 4 for the released models).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opencodegen.checkpoint.hf import model_from_state, qkv_from_released
from opencodegen.config import CodeGenConfig
from opencodegen.errors import CheckpointError, ConfigError

# (leaf path in tree order, shape in terms of L = n_layer, d = model dim, f = 4d, V = vocab)
LEAVES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("embed/embedding_sharded/~/proj/b", ("d",)),
    ("embed/embedding_sharded/~/proj/w", ("V", "d")),
    ("proj/projection/~/layer_norm/offset", ("d",)),
    ("proj/projection/~/layer_norm/scale", ("d",)),
    ("proj/projection/~/linear/b", ("V",)),
    ("proj/projection/~/linear/w", ("d", "V")),
    ("transformer/block/~/attn/~/proj_out/w", ("L", "d", "d")),
    ("transformer/block/~/attn/~/proj_qkv/w", ("L", "d", "3d")),
    ("transformer/block/~/ff/~/proj_in/b", ("L", "f")),
    ("transformer/block/~/ff/~/proj_in/w", ("L", "d", "f")),
    ("transformer/block/~/ff/~/proj_out/b", ("L", "d")),
    ("transformer/block/~/ff/~/proj_out/w", ("L", "f", "d")),
    ("transformer/block/~/ln/offset", ("L", "d")),
    ("transformer/block/~/ln/scale", ("L", "d")),
)

# per-layer leaf -> (HF name inside transformer.h.{i}, is a matrix to transpose)
_LAYER_NAMES = {
    "transformer/block/~/attn/~/proj_out/w": ("attn.out_proj.weight", True),
    "transformer/block/~/attn/~/proj_qkv/w": ("attn.qkv.weight", True),
    "transformer/block/~/ff/~/proj_in/b": ("mlp.fc_in.bias", False),
    "transformer/block/~/ff/~/proj_in/w": ("mlp.fc_in.weight", True),
    "transformer/block/~/ff/~/proj_out/b": ("mlp.fc_out.bias", False),
    "transformer/block/~/ff/~/proj_out/w": ("mlp.fc_out.weight", True),
    "transformer/block/~/ln/offset": ("ln_1.bias", False),
    "transformer/block/~/ln/scale": ("ln_1.weight", False),
}


def read_leaves(path: Path) -> list[torch.Tensor]:
    """The arrays of an npz written by ``np.savez(f, *leaves)``, in leaf order, as tensors
    (raw 2-byte voids become bfloat16)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable npz file ({exc})") from None
    with npz:
        names = sorted(npz.files, key=lambda n: int(n[4:]) if n.startswith("arr_") and n[4:].isdigit() else -1)
        if not names or not names[0].startswith("arr_") or names != [f"arr_{i}" for i in range(len(names))]:
            raise CheckpointError(f"{path}: expected arrays arr_0 … arr_N (np.savez of the leaves), got {npz.files[:5]}")
        leaves = []
        for name in names:
            try:
                array = npz[name]
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                raise CheckpointError(f"{path}: array {name} is corrupt ({exc})") from None
            if array.dtype == np.dtype("V2"):
                leaves.append(torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16))
            elif array.dtype.kind == "f":
                leaves.append(torch.from_numpy(np.ascontiguousarray(array)))
            else:
                raise CheckpointError(f"{path}: array {name} has dtype {array.dtype}, expected floats or V2 (bf16)")
    return leaves


def _check_shapes(leaves: list[torch.Tensor], source: Path) -> dict[str, int]:
    """Infer L, d, V from the leaves and check every leaf against `LEAVES`."""
    if len(leaves) != len(LEAVES):
        raise CheckpointError(
            f"{source}: {len(leaves)} arrays, a JAXFORMER CodeGen model has {len(LEAVES)} "
            f"({', '.join(name for name, _ in LEAVES)})"
        )
    by_name = dict(zip((name for name, _ in LEAVES), leaves))
    embed, qkv = by_name["embed/embedding_sharded/~/proj/w"], by_name["transformer/block/~/attn/~/proj_qkv/w"]
    if embed.ndim != 2 or qkv.ndim != 3:
        raise CheckpointError(
            f"{source}: arrays 1 and 7 have shapes {list(embed.shape)} and {list(qkv.shape)}, not the embedding "
            "and the stacked qkv of a JAXFORMER CodeGen model in the documented leaf order"
        )
    vocab, d = embed.shape
    dims = {"L": qkv.shape[0], "d": d, "3d": 3 * d, "f": 4 * d, "V": vocab}
    for (name, symbols), leaf in zip(LEAVES, leaves):
        expected = tuple(dims[s] for s in symbols)
        if tuple(leaf.shape) != expected:
            raise CheckpointError(
                f"{source}: leaf {name} has shape {list(leaf.shape)}, expected {list(expected)} "
                f"(n_layer={dims['L']}, d={d}, vocab={vocab})"
            )
    return dims


def state_from_leaves(leaves: list[torch.Tensor], mp_num: int, source: Path) -> dict[str, torch.Tensor]:
    """The model's state dict (plain [q; k; v]) from the JAXFORMER leaves, in fp32."""
    dims = _check_shapes(leaves, source)
    if dims["d"] % mp_num:
        raise ConfigError(f"mp_num={mp_num} does not divide the model dimension {dims['d']}")
    leaf = {name: t.float() for (name, _), t in zip(LEAVES, leaves)}
    state = {
        "transformer.wte.weight": leaf["embed/embedding_sharded/~/proj/w"] + leaf["embed/embedding_sharded/~/proj/b"],
        "transformer.ln_f.weight": leaf["proj/projection/~/layer_norm/scale"],
        "transformer.ln_f.bias": leaf["proj/projection/~/layer_norm/offset"],
        "lm_head.weight": leaf["proj/projection/~/linear/w"].T,
        "lm_head.bias": leaf["proj/projection/~/linear/b"],
    }
    for name, (hf_name, matrix) in _LAYER_NAMES.items():
        for i, layer in enumerate(leaf[name].unbind(0)):
            tensor = layer.T if matrix else layer
            if hf_name == "attn.qkv.weight":
                tensor = qkv_from_released(tensor, mp_num)
            state[f"transformer.h.{i}.{hf_name}"] = tensor
    return {k: v.contiguous() for k, v in state.items()}


def read_jaxformer_config(path: str | Path) -> dict[str, Any]:
    """The model settings of a JAXFORMER run config (config/*.json of the library)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such JAXFORMER config") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a JSON config ({exc})") from None
    missing = [k for k in ("model_heads", "model_pe_rotary_dims") if k not in data]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)} (not a JAXFORMER model config?)")
    return {
        "n_head": int(data["model_heads"]),
        "rotary_dim": int(data["model_pe_rotary_dims"]),
        "n_positions": int(data.get("model_seq_len", 2048)),
        "mp_num": int(data["tpu_cores"]) if "tpu_cores" in data else None,
    }


def step_directory(path: str | Path, step: int | None = None) -> Path:
    """`path` itself when it holds model/ (a step directory), else its step subdirectory
    `step` (default: the highest numbered one)."""
    path = Path(path)
    if (path / "model").is_dir():
        return path
    steps = sorted((int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True) \
        if path.is_dir() else []
    if not steps:
        raise CheckpointError(f"{path}: neither a JAXFORMER step directory (with model/) nor a ckpt_dir of steps")
    chosen = steps[0] if step is None else step
    if chosen not in steps:
        raise CheckpointError(f"{path}: no step {step} (have {', '.join(map(str, sorted(steps)))})")
    return path / str(chosen)


def import_jaxformer(
    path: str | Path,
    out: str | Path,
    *,
    n_head: int,
    rotary_dim: int,
    mp_num: int,
    n_positions: int = 2048,
    step: int | None = None,
    process_index: int = 0,
    dtype: torch.dtype | None = None,
) -> tuple[Path, CodeGenConfig]:
    """Convert a JAXFORMER checkpoint into an HF CodeGen directory `out` (weights and
    config.json; tokenizer files are the caller's); returns the step directory read and the
    model config. dtype None keeps the stored precision (bf16 or fp32)."""
    source = step_directory(path, step)
    npz = source / "model" / f"{process_index}.npz"
    leaves = read_leaves(npz)
    state = state_from_leaves(leaves, mp_num, npz)
    d = state["transformer.wte.weight"].shape[1]
    config = CodeGenConfig(
        vocab_size=state["transformer.wte.weight"].shape[0],
        n_embd=d,
        n_layer=sum(1 for k in state if k.endswith("attn.qkv.weight")),
        n_head=n_head,
        rotary_dim=rotary_dim,
        n_positions=n_positions,
        n_ctx=n_positions,
    )
    model = model_from_state(config, state)
    stored = torch.bfloat16 if leaves[0].dtype == torch.bfloat16 else torch.float32
    model.save_pretrained(out, dtype=dtype or stored)
    return source, config
