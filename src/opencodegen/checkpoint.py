"""Hugging Face CodeGen checkpoint directories in and out, and export to the GPT-J layout.

The released weights fuse q, k, v into `attn.qkv_proj.weight` cut into mp_num=4 shards, each
holding (Q, V, K) slices of d/4 rows; the model keeps a plain [q; k; v] `attn.qkv.weight`.
The conversion happens here, tensor by tensor, so that loading never holds two copies of the
weights: safetensors files are read with plain reads straight into the final tensors (an
mmap would keep the file's pages resident beside them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from opencodegen import default_model, hub
from opencodegen.config import CodeGenConfig
from opencodegen.devices import parse_device, parse_dtype
from opencodegen.errors import CheckpointError, ConfigError
from opencodegen.model import CodeGenForCausalLM

if TYPE_CHECKING:
    from opencodegen.tokenizer import CodeGenTokenizer

MP_NUM = 4
_IGNORED_KEYS = re.compile(r"attn\.(causal_mask|masked_bias|bias)$")
_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
# lm_head bias of an exported embedding row that no token names: exp() of it is 0 next to any real logit
UNUSED_ROW_BIAS = -1e4


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


# ---- locating and reading files -------------------------------------------------------------
def resolve_checkpoint(path_or_hub_id: str | os.PathLike[str]) -> Path:
    """A local checkpoint directory, a hub id (the local HF cache first, else downloaded; see
    opencodegen.hub), or "default": the embedded demo model (`opencodegen.default_model`)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_hub_id)
    if name == default_model.NAME:
        return default_model.DIRECTORY
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint directory, found a file")
    if hub.is_hub_id(name):
        return hub.snapshot(name, has_weights, _hub_patterns)
    raise CheckpointError(f"{path}: no such checkpoint directory")


def has_weights(directory: Path) -> bool:
    """Whether `directory` holds a config.json and complete weights (a usable cached snapshot)."""
    try:
        return (directory / "config.json").is_file() and bool(weight_files(directory))
    except CheckpointError:
        return False


def _hub_patterns(files: list[str]) -> list[str]:
    """What to download of a hub repository: config, tokenizer and safetensors weights (the
    .bin weights only where there are no safetensors)."""
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    return _HUB_PATTERNS if has_safetensors else [*_HUB_PATTERNS, "*.bin"]


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint: single or sharded safetensors, else .bin."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (directory / single).exists():
            return [directory / single]
        if (directory / index).exists():
            try:
                weight_map = json.loads((directory / index).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{directory / index}: malformed shard index ({exc})") from None
            files = [directory / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise CheckpointError(f"{directory / index}: shard files missing: {', '.join(missing)}")
            return files
    if (directory / "dcp" / ".metadata").is_file():
        raise CheckpointError(f"{directory}: a sharded training checkpoint; make an HF directory of it with "
                              f"`opencodegen convert checkpoint {directory} --out DIR`")
    raise CheckpointError(
        f"{directory}: no weights found (model.safetensors, pytorch_model.bin or a sharded *.index.json)"
    )


def _read_safetensors(path: Path, mappable: Callable[[str, torch.dtype], bool]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from a safetensors file (format: u64 header length, JSON header of
    dtype/shape/data_offsets, raw little-endian data).

    Tensors for which `mappable(name, dtype)` holds are zero-copy views of a private memory map
    of the file (pages load on first touch); the others, which the caller converts, are read
    into fresh memory so that the file's pages never sit beside the converted copy.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file (no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(size - 8, 100 << 20):
            raise CheckpointError(f"{path}: corrupt safetensors header (length {header_len})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
        header.pop("__metadata__", None)
        base = 8 + header_len
        mapped = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage.from_file(str(path), False, size))
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            try:
                dtype = _SAFETENSORS_DTYPES[info["dtype"]]
                shape = list(info["shape"])
                start, end = (base + offset for offset in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: tensor {name!r}: unsupported or malformed entry {info!r:.120}") from None
            if end > size:
                raise CheckpointError(f"{path}: truncated file: tensor {name!r} ends past the end of the file")
            if mappable(name, dtype) and start % dtype.itemsize == 0:
                buffer = mapped[start:end]
            else:
                buffer = torch.empty(end - start, dtype=torch.uint8)
                f.seek(start)
                if f.readinto(memoryview(buffer.numpy())) != end - start:
                    raise CheckpointError(f"{path}: short read of tensor {name!r}")
            try:
                yield name, buffer.view(dtype).reshape(shape)
            except RuntimeError as exc:
                raise CheckpointError(f"{path}: tensor {name!r}: size does not match shape {shape} ({exc})") from None


def _read_bin(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read PyTorch weights ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    yield from state.items()


def read_tensors(
    files: list[Path], mappable: Callable[[str, torch.dtype], bool] = lambda name, dtype: True
) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """(file, name, tensor) of every stored tensor; see _read_safetensors for `mappable`."""
    for path in files:
        tensors = _read_safetensors(path, mappable) if path.suffix == ".safetensors" else _read_bin(path)
        for name, tensor in tensors:
            yield path, name, tensor


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
    from opencodegen import lora

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


# ---- saving --------------------------------------------------------------------------------
def _exported_state(
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
    return _exported_state(
        model, dtype, lambda name, w: {name.replace(".attn.qkv.", ".attn.qkv_proj."): qkv_to_released(w)}
    )


def _gptj_qkv(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    prefix = name.removesuffix("qkv.weight")
    return {f"{prefix}{part}_proj.weight": chunk for part, chunk in zip(("q", "k", "v"), weight.chunk(3))}


def write_safetensors(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> None:
    """Write model.safetensors, or shards plus model.safetensors.index.json past max_shard_bytes."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for shard, name in zip(shards, names):
        tmp = directory / (name + ".tmp")
        save_file(shard, tmp, metadata={"format": "pt"})
        os.replace(tmp, directory / name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {key: name for shard, name in zip(shards, names) for key in shard},
        }
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


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
    model.config.save(directory, dtype=_DTYPE_NAMES.get(dtype))


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
    state = _exported_state(model, dtype, _gptj_qkv)
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
        "torch_dtype": _DTYPE_NAMES.get(dtype),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
