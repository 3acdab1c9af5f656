"""Hugging Face CodeGen checkpoints: the released fused-qkv layout, loading a model (layer by
layer, optionally quantized) and saving one that transformers loads.

The released weights fuse q, k, v into `attn.qkv_proj.weight` cut into mp_num=4 shards, each
holding (Q, V, K) slices of d/4 rows; the model keeps a plain [q; k; v] `attn.qkv.weight`.
The conversion happens here, tensor by tensor, so that loading never holds two copies of the
weights.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from opencodegen.checkpoint.files import read_tensors, resolve_checkpoint, weight_files, write_safetensors
from opencodegen.config import CodeGenConfig
from opencodegen.devices import parse_device, parse_dtype
from opencodegen.errors import CheckpointError, ConfigError
from opencodegen.model import CodeGenForCausalLM

MP_NUM = 4
_IGNORED_KEYS = re.compile(r"attn\.(causal_mask|masked_bias|bias)$")
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


# ---- fused qkv layout ------------------------------------------------------------------------
def qkv_from_released(w: torch.Tensor, mp_num: int = MP_NUM) -> torch.Tensor:
    """Released rows [3d, n] (per shard: Q, V, K) -> plain [q; k; v] (n = d for the weight,
    r for a LoRA B matrix)."""
    d, n = w.shape[0] // 3, w.shape[1]
    shards = w.reshape(mp_num, 3, d // mp_num, n)
    q, v, k = (shards[:, i].reshape(d, n) for i in range(3))
    return torch.cat((q, k, v))


def qkv_to_released(w: torch.Tensor, mp_num: int = MP_NUM) -> torch.Tensor:
    """Plain [q; k; v] rows [3d, n] -> the released layout (per shard: Q, V, K)."""
    d, n = w.shape[0] // 3, w.shape[1]
    q, k, v = (part.reshape(mp_num, d // mp_num, n) for part in w.split(d))
    return torch.stack((q, v, k), dim=1).reshape(3 * d, n)


# ---- loading -------------------------------------------------------------------------------
def _internal_name(hf_name: str) -> str:
    return hf_name.replace(".attn.qkv_proj.", ".attn.qkv.")


def load_model(
    path_or_hub_id: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    quantize: str | None = None,
) -> tuple[Path, CodeGenForCausalLM]:
    """Load an HF CodeGen checkpoint; returns (directory, model in eval mode).

    dtype None keeps the stored dtype, except float16 on CPU, which becomes float32 (and any
    dtype becomes float32 with `quantize`). `quantize` ("int8", "int4"; see
    quantize.py) replaces each linear layer as soon as its weights are read, so the
    float weights of the whole model never sit in memory together.

    A LoRA adapter directory (peft layout, see lora.py) loads as its base model with the
    adapters merged in; the directory returned is the one holding the tokenizer.
    """
    directory = resolve_checkpoint(path_or_hub_id)
    from opencodegen.checkpoint import lora

    if lora.is_adapter_directory(directory):
        return lora.load_merged(directory, device=device, dtype=dtype, quantize=quantize)
    try:
        config = CodeGenConfig.from_json_file(directory / "config.json")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    files = weight_files(directory)
    target = parse_dtype(dtype) if dtype is not None else None
    device = parse_device(device)

    with _skip_init(), torch.device("meta"):
        model = CodeGenForCausalLM(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    quantized = _LayerByLayer(model, quantize, device, target or torch.float32) if quantize else None
    if quantized is not None:
        target = torch.float32

    def resolved(stored: torch.dtype) -> torch.dtype:
        return target or (torch.float32 if stored == torch.float16 and device.type == "cpu" else stored)

    def mappable(hf_name: str, stored: torch.dtype) -> bool:  # used as stored: no conversion, kept
        return (device.type == "cpu" and stored == resolved(stored) and not hf_name.endswith("qkv_proj.weight")
                and not (quantized and quantized.owns(_internal_name(hf_name))))

    for path, hf_name, tensor in read_tensors(files, mappable):
        if _IGNORED_KEYS.search(hf_name):
            continue
        name = _internal_name(hf_name)
        if name not in expected:
            raise CheckpointError(f"{path}: unexpected key {hf_name!r} (not a CodeGen weight)")
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{path}: {hf_name!r} has shape {list(tensor.shape)}, config.json implies {list(expected[name])}"
            )
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: {hf_name!r} has dtype {tensor.dtype}, expected a floating type")
        if name.endswith("attn.qkv.weight"):
            tensor = qkv_from_released(tensor)
        tensor = tensor.to(device=device, dtype=resolved(tensor.dtype))
        if quantized is None or not quantized.take(name, tensor):
            state[name] = tensor
        del tensor
    missing = sorted(set(expected) - set(state) - (quantized.done if quantized else set()))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"{directory}: {len(missing)} weights missing from {files[0].name}: {shown}")
    if quantized is not None:
        quantized.install()
    model.load_state_dict(state, assign=True, strict=quantized is None)
    model.rotary = model.rotary.to(device)
    return directory, model.eval()


class _LayerByLayer:
    """Quantizes the linear layers of a model being loaded as their weights (and biases) arrive."""

    def __init__(self, model: CodeGenForCausalLM, mode: str, device: torch.device, dtype: torch.dtype) -> None:
        from opencodegen.quantize import check_quantizable, layer_quantizer

        self.make = layer_quantizer(mode)
        check_quantizable(model, mode, device, dtype)
        self.model = model
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.replacements: dict[str, nn.Module] = {}
        self.done: set[str] = set()  # state-dict names already taken

    def owns(self, name: str) -> bool:
        """Whether the state-dict entry `name` is a weight or bias of a linear layer."""
        return name.rpartition(".")[0] in self.layers

    def take(self, name: str, tensor: torch.Tensor) -> bool:
        """Keep `tensor` if it belongs to a linear layer (quantizing the layer once it is whole)."""
        if not self.owns(name):
            return False
        layer, _, kind = name.rpartition(".")
        parts = self.pending.setdefault(layer, {})
        parts[kind] = tensor
        self.done.add(name)
        meta = self.layers[layer]
        if "weight" in parts and (meta.bias is None or "bias" in parts):
            shell = nn.Linear(meta.in_features, meta.out_features, bias=meta.bias is not None, device="meta")
            shell.weight = nn.Parameter(parts["weight"], requires_grad=False)
            if meta.bias is not None:
                shell.bias = nn.Parameter(parts["bias"], requires_grad=False)
            self.replacements[layer] = self.make(shell)
            del self.pending[layer]
        return True

    def install(self) -> None:
        """Put every quantized layer into the model (all of them are complete by now)."""
        from opencodegen.quantize import replace_linear_layers

        replace_linear_layers(self.model, lambda name, layer: self.replacements[name])


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Make torch.nn's parameter initialisers no-ops while building a model whose weights are
    loaded right after (on the meta device they would import torch._dynamo, seconds of start-up)."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "ones_", "zeros_")
    saved = {name: getattr(torch.nn.init, name) for name in names}
    for name in names:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def model_from_state(config: CodeGenConfig, state: dict[str, torch.Tensor]) -> CodeGenForCausalLM:
    """A CodeGenForCausalLM whose parameters are the tensors of `state` (no copy)."""
    with torch.device("meta"):
        model = CodeGenForCausalLM(config)
    model.load_state_dict(state, assign=True, strict=True)
    return model


# ---- saving --------------------------------------------------------------------------------
def exported_state(
    model: CodeGenForCausalLM,
    dtype: torch.dtype | None,
    split_qkv: Callable[[str, torch.Tensor], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """The weights on the CPU in `dtype` (default: as they are), each fused qkv replaced by
    what `split_qkv(name, weight)` returns; every tensor contiguous, as safetensors needs."""
    if not isinstance(model.lm_head, nn.Linear):
        raise CheckpointError("this model's linear layers are quantized (kept in a kernel's packed format): save the "
                              "float model, then quantize it again after loading")
    out = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to(dtype=dtype or tensor.dtype, device="cpu")
        parts = split_qkv(name, tensor) if name.endswith("attn.qkv.weight") else {name: tensor}
        out.update((key, part.contiguous()) for key, part in parts.items())
    return out


def released_state_dict(model: CodeGenForCausalLM, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's weights under the HF CodeGen names and layout."""
    return exported_state(
        model, dtype, lambda name, w: {name.replace(".attn.qkv.", ".attn.qkv_proj."): qkv_to_released(w)}
    )


def save_model(
    model: CodeGenForCausalLM,
    directory: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = 4 << 30,
) -> None:
    """Save config.json + safetensors in the HF CodeGen layout (transformers loads it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = parse_dtype(dtype) if dtype is not None else model.dtype
    write_safetensors(released_state_dict(model, dtype), directory, max_shard_bytes)
    model.config.save(directory, dtype=DTYPE_NAMES.get(dtype))

