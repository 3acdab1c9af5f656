"""LoRA adapters for CodeGen: low-rank updates W + (alpha / r) · B A on chosen linear layers.

Written here rather than taken from `peft`: our model keeps a plain [q; k; v] fused projection
where HF CodeGen (and so peft) has `qkv_proj` in the released (Q, V, K) × mp_num row order, and a
few dozen lines cover what training, merging and loading need. Adapters are stored in peft's
layout, so peft and transformers load them on top of the HF checkpoint:

- ``adapter_config.json``: ``peft_type: LORA``, ``r``, ``lora_alpha``, ``lora_dropout``,
  ``target_modules`` (HF module names: ``qkv_proj``, ``out_proj``, ``fc_in``, ``fc_out``,
  ``lm_head``), ``base_model_name_or_path``;
- ``adapter_model.safetensors``: ``base_model.model.{HF module}.lora_A.weight`` [r, in] and
  ``lora_B.weight`` [out, r], lora_B of ``qkv_proj`` in the released row order.

The frozen base weights may be held in fp32, bf16 or int8 (one scale per output row) while the
adapters train in fp32.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from opencodegen.errors import CheckpointError, ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
# HF module name -> where it sits in our model (a suffix of the module path)
TARGETS = {"qkv_proj": "attn.qkv", "out_proj": "attn.out_proj", "fc_in": "mlp.fc_in", "fc_out": "mlp.fc_out",
           "lm_head": "lm_head"}
BASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """The `lora:` mapping of a run config (defaults: every linear layer of the blocks)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("qkv_proj", "out_proj", "fc_in", "fc_out")
    base_dtype: str = "fp32"  # how the frozen base is held: fp32, bf16 or int8
    rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"lora.targets: unknown module(s) {unknown}; choose from {', '.join(TARGETS)}")
        if self.base_dtype not in BASE_DTYPES:
            raise ConfigError(f"lora.base_dtype must be one of {', '.join(BASE_DTYPES)}, got {self.base_dtype!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> LoraSettings:
        """From the run config's `lora` mapping; ConfigError names an unknown key or a bad value."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"lora: unknown setting(s) {unknown}; known: {', '.join(fields)}")
        kwargs: dict[str, Any] = {}
        try:
            for key, value in data.items():
                if key == "targets":
                    kwargs[key] = (value,) if isinstance(value, str) else tuple(str(t) for t in value)
                elif key in ("r",):
                    if isinstance(value, bool) or int(value) != value:
                        raise ValueError
                    kwargs[key] = int(value)
                elif key in ("alpha", "dropout"):
                    kwargs[key] = float(value)
                elif key == "rslora":
                    if not isinstance(value, bool):
                        raise ValueError
                    kwargs[key] = value
                else:
                    kwargs[key] = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"lora.{key}: bad value {value!r}") from None
        return cls(**kwargs)

    def peft_config(self, base_model: str | None) -> dict[str, Any]:
        """adapter_config.json in peft's LoRA format."""
        return {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model, "revision": None,
            "r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout, "target_modules": list(self.targets),
            "bias": "none", "fan_in_fan_out": False, "use_rslora": self.rslora, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
            "rank_pattern": {}, "alpha_pattern": {},
        }

    @classmethod
    def from_peft_config(cls, config: dict[str, Any], where: Path) -> LoraSettings:
        """Settings of a peft LoRA adapter_config.json; CheckpointError for what we cannot load."""
        if config.get("peft_type") != "LORA":
            raise CheckpointError(f"{where}: peft_type {config.get('peft_type')!r}; only LORA adapters are supported")
        for key, plain in (("bias", "none"), ("fan_in_fan_out", False), ("use_dora", False),
                           ("rank_pattern", {}), ("alpha_pattern", {}), ("modules_to_save", None),
                           ("layers_to_transform", None)):
            if config.get(key, plain) not in (plain, None) and config.get(key) != plain:
                raise CheckpointError(f"{where}: {key}={config[key]!r} is not supported (only {plain!r})")
        targets = config.get("target_modules")
        if isinstance(targets, str):
            raise CheckpointError(f"{where}: target_modules as a regular expression is not supported; list the modules")
        try:
            return cls(r=int(config["r"]), alpha=float(config.get("lora_alpha", 8)),
                       dropout=float(config.get("lora_dropout") or 0.0), targets=tuple(targets or ()),
                       rslora=bool(config.get("use_rslora", False)))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise CheckpointError(f"{where}: bad LoRA settings ({exc})") from None


# ---- layers ----------------------------------------------------------------------------------
class FrozenLinear(nn.Module):
    """A linear layer that does not train, its weight held in fp32, bf16 or int8 (symmetric, one
    scale per output row); it computes in the input's dtype."""

    def __init__(self, linear: nn.Linear, base_dtype: str = "fp32") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        if base_dtype == "int8":
            scale = weight.float().abs().amax(1).clamp(min=1e-12) / 127
            self.register_buffer("scale", scale)
            weight = (weight.float() / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
        self.weight = nn.Parameter(weight.to(BASE_DTYPES[base_dtype]), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.weight.dtype == torch.int8:
            return self.weight.to(dtype) * self.scale[:, None].to(dtype)
        return self.weight.to(dtype)

    def merged(self, dtype: torch.dtype) -> nn.Linear:
        return _plain_linear(self.dense_weight(), self.bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        if self.weight.dtype == torch.int8:
            out = _Int8Linear.apply(x.to(dtype), self.weight, self.scale)
            return out if bias is None else out + bias
        return F.linear(x.to(dtype), self.weight.to(dtype), bias)


class _Int8Linear(torch.autograd.Function):
    """x @ (q · scale)ᵀ for a frozen int8 weight; the backward pass dequantizes it again rather
    than keeping every layer's dense copy alive until then."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, scale)
        return F.linear(x, q.to(x.dtype) * scale[:, None].to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, scale = ctx.saved_tensors
        return grad @ (q.to(grad.dtype) * scale[:, None].to(grad.dtype)), None, None


class LoraLinear(nn.Module):
    """base(x) + scaling · B(A(dropout(x))) with a frozen base; A starts random, B at zero, so
    the adapted model starts as the base model."""

    def __init__(self, linear: nn.Linear, settings: LoraSettings) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.base = FrozenLinear(linear, settings.base_dtype)
        device = linear.weight.device
        self.lora_A = nn.Linear(self.in_features, settings.r, bias=False, device=device)
        self.lora_B = nn.Linear(settings.r, self.out_features, bias=False, device=device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(settings.dropout) if settings.dropout else nn.Identity()
        self.scaling = settings.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def merged(self, dtype: torch.dtype) -> nn.Linear:
        """A plain linear layer with W + scaling · B A, in `dtype`."""
        delta = self.lora_B.weight.detach().float() @ self.lora_A.weight.detach().float()
        return _plain_linear(self.base.dense_weight() + self.scaling * delta, self.base.bias, dtype)


def _plain_linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Linear:
    """The model's `Linear` holding `weight` and `bias` in `dtype`."""
    from opencodegen.model import Linear

    layer = Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach().to(dtype))
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().to(dtype))
    return layer


# ---- applying, merging, naming -----------------------------------------------------------------
def _hf_name(module_name: str) -> str:
    return module_name.replace(".attn.qkv", ".attn.qkv_proj")


def _targeted(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Module]:
    suffixes = tuple(TARGETS[t] for t in targets)
    return {name: m for name, m in model.named_modules()
            if name == "lm_head" and "lm_head" in targets or name.endswith(tuple("." + s for s in suffixes))}


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Freeze every parameter of `model` and put a LoraLinear on each targeted linear layer; with
    base_dtype bf16 or int8 the other linear layers are held that way too (the embedding and the
    LayerNorms stay fp32)."""
    for param in model.parameters():
        param.requires_grad_(False)
    targeted = _targeted(model, settings.targets)
    for name, layer in list(model.named_modules()):
        if name in targeted and not isinstance(layer, nn.Linear):
            raise ConfigError(f"lora: {name} is not a float linear layer (a quantized model cannot take adapters)")
        if name in targeted:
            _replace(model, name, LoraLinear(layer, settings))
        elif isinstance(layer, nn.Linear) and settings.base_dtype != "fp32":
            _replace(model, name, FrozenLinear(layer, settings.base_dtype))
    return model


def merge_lora(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every LoraLinear (and FrozenLinear) by a plain linear layer holding W + scaling · B A
    (in `dtype`, default fp32); returns the model, every parameter trainable again."""
    for kind in (LoraLinear, FrozenLinear):  # adapted layers first: they hold a FrozenLinear each
        for name, module in list(model.named_modules()):
            if isinstance(module, kind):
                _replace(model, name, module.merged(dtype or torch.float32))
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def is_lora_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or name.startswith(("lora_A.", "lora_B."))


def peft_state_from_internal(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapter tensors named as in our model -> peft's names and layout (CPU, contiguous)."""
    from opencodegen.checkpoint.hf import qkv_to_released

    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu", torch.float32)
        if name.endswith("attn.qkv.lora_B.weight"):
            tensor = qkv_to_released(tensor)
        out[PREFIX + _hf_name(name)] = tensor.contiguous()
    return out


def internal_state_from_peft(state: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    """The inverse of `peft_state_from_internal` (names checked)."""
    from opencodegen.checkpoint.hf import qkv_from_released

    out = {}
    for name, tensor in state.items():
        if not name.startswith(PREFIX) or not is_lora_key(name):
            raise CheckpointError(f"{where}: unexpected tensor {name!r} (expected {PREFIX}…lora_A/lora_B.weight)")
        internal = name.removeprefix(PREFIX).replace(".attn.qkv_proj.", ".attn.qkv.")
        if internal.endswith("attn.qkv.lora_B.weight"):
            tensor = qkv_from_released(tensor)
        out[internal] = tensor
    return out


# ---- adapter directories ---------------------------------------------------------------------
def is_adapter_directory(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def read_adapter_settings(directory: Path) -> tuple[LoraSettings, dict[str, Any]]:
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no {ADAPTER_CONFIG}; not a LoRA adapter directory") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / ADAPTER_CONFIG}: unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory / ADAPTER_CONFIG}: expected a JSON object")
    return LoraSettings.from_peft_config(config, directory), config


def write_adapter(directory: Path, state: dict[str, torch.Tensor], settings: LoraSettings,
                  base_model: str | None) -> None:
    """adapter_config.json + adapter_model.safetensors of `state` (our names) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(peft_state_from_internal(state), directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(settings.peft_config(base_model), indent=2) + "\n")


def save_adapter(model: nn.Module, directory: str | Path, settings: LoraSettings, base_model: str | None) -> None:
    """Write `model`'s adapters (peft layout) into `directory`."""
    write_adapter(Path(directory), {n: t for n, t in model.state_dict().items() if is_lora_key(n)}, settings,
                  base_model)


def load_adapter_weights(model: nn.Module, directory: Path) -> None:
    """Copy the adapter tensors of `directory` into `model` (which carries the same adapters)."""
    path = directory / ADAPTER_WEIGHTS
    try:
        stored = load_file(path)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    state = internal_state_from_peft(stored, directory)
    expected = {name: p for name, p in model.state_dict().items() if is_lora_key(name)}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: adapters do not match the model: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{path}: {name} has shape {list(tensor.shape)}, the model expects "
                                  f"{list(expected[name].shape)}")
    model.load_state_dict(state, strict=False)


def load_adapter(model: nn.Module, directory: str | Path) -> LoraSettings:
    """Put the adapters of a peft LoRA directory on `model` (frozen base); returns their settings."""
    directory = Path(directory)
    settings, _ = read_adapter_settings(directory)
    apply_lora(model, settings)
    load_adapter_weights(model, directory)
    return settings


def load_merged(adapter_dir: str | Path, base: str | None = None, device: str | torch.device = "cpu",
                dtype: torch.dtype | str | None = None, quantize: str | None = None) -> tuple[Path, nn.Module]:
    """The base model with the adapters of `adapter_dir` merged in: (directory with the tokenizer,
    model in eval mode). `base` overrides the adapter's base_model_name_or_path."""
    from opencodegen.checkpoint import load_model
    from opencodegen.devices import parse_device, parse_dtype
    from opencodegen.tokenizer import TOKENIZER_FILES

    adapter_dir = Path(adapter_dir)
    _, config = read_adapter_settings(adapter_dir)
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{adapter_dir / ADAPTER_CONFIG}: no base_model_name_or_path; name the base model "
                              "(e.g. `opencodegen convert merge-lora ADAPTER --base DIR`)")
    if is_adapter_directory(Path(base).expanduser()):
        raise CheckpointError(f"{adapter_dir}: its base {base} is itself an adapter directory; name a full model")
    base_dir, model = load_model(base, dtype=parse_dtype(dtype) if dtype is not None else None)
    model_dtype = model.dtype
    load_adapter(model, adapter_dir)
    merge_lora(model, model_dtype)
    model.requires_grad_(False)
    if quantize:
        from opencodegen.quantize import quantize as quantize_model

        model = quantize_model(model.float(), quantize)
    tokenizer_dir = adapter_dir if any((adapter_dir / n).is_file() for n in TOKENIZER_FILES) else base_dir
    return tokenizer_dir, model.to(parse_device(device)).eval()
