"""Int8 and int4 quantization of the linear layers, for fast decoding on CPU.

Decoding one token reads every weight once, so on CPU its speed is set by memory bandwidth
and by how fast the kernel turns bytes into products. Weights are int8 with one scale per output
row (symmetric); activations are quantized on the fly to uint8 with one scale and zero point per
matmul (PyTorch's dynamic quantization, FBGEMM's VNNI kernels on x86), so the int8 products run
natively instead of being converted to floats first. Everything else (embedding, LayerNorm,
GELU, attention, residuals, KV cache) stays in float32. (An int8 weight-only kernel with float
activations is slower: its dequantization is compute-bound.)

Int4 (`Int4Linear`, kernels/int4_linear.py) halves the bytes again: 4.5 bits per weight, with
activations quantized per call to int8 (one scale per row) and exact integer dot products per
group of 32 weights. It needs an x86-64 CPU with AVX-512 VNNI and a C compiler, and costs more
accuracy than int8 (see the README).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from opencodegen.errors import ConfigError
from opencodegen.kernels import int4_linear
from opencodegen.model import CodeGenForCausalLM

MODES = ("int8", "int4")


def _full_range_activations() -> bool:
    """Whether uint8 activations may use all 8 bits: only VNNI's int32 products cannot saturate
    (without it, u8 x s8 pairs are summed in int16, and FBGEMM needs 7-bit activations)."""
    is_vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(is_vnni and is_vnni())


class Int8Linear(nn.Module):
    """A Linear with int8 weights [out, in] (one float scale per output row) and dynamically
    quantized activations; input and output are float32."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(1) / 127).clamp(min=1e-30).double()
        zero_point = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated, their kernels are not (yet)
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scale, zero_point, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.full_range = _full_range_activations()
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.dtype != torch.float32:  # (checked here: a no-op cast still costs a dispatch per layer)
            rows = rows.float()
        out = torch.ops.quantized.linear_dynamic(rows, self._packed, not self.full_range)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """A Linear with 4-bit weights (see kernels/int4_linear.py); input and output are float32."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        packed, scales = int4_linear.pack(linear.weight.detach())
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = int4_linear.linear(x.reshape(-1, self.in_features), self.packed, self.scales, self.bias)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def _int8_layer(linear: nn.Linear) -> Int8Linear:
    try:
        return Int8Linear(linear)
    except (AttributeError, RuntimeError) as exc:  # quantized tensors gone from a future PyTorch
        raise ConfigError(f"int8 quantization is not available in PyTorch {torch.__version__}: {exc}") from None


def layer_quantizer(mode: str) -> Callable[[nn.Linear], nn.Module]:
    """What replaces one float32 linear layer in `mode` ("int8" or "int4"); raises ConfigError
    where this machine or PyTorch build cannot run that mode."""
    if mode not in MODES:
        raise ConfigError(f"unknown quantization {mode!r}; known: {', '.join(MODES)}")
    if mode == "int8":
        if torch.backends.quantized.engine == "none":
            raise ConfigError("int8 quantization needs a PyTorch build with a quantized engine (x86/fbgemm, qnnpack)")
        return _int8_layer
    if int4_linear.LIBRARY.functions() is None:
        raise ConfigError(f"int4 quantization needs its CPU kernel, which is {int4_linear.LIBRARY.status()} "
                          "(use --quantize int8)")
    return Int4Linear


def check_quantizable(model: CodeGenForCausalLM, mode: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raise ConfigError unless `model`'s linear layers can be quantized by `mode` for a model on
    `device` in `dtype` (its weights may still be on the meta device: only shapes are read)."""
    if device.type != "cpu":
        raise ConfigError(f"{mode} quantization is for CPU decoding; use bfloat16/float16 on GPU")
    if dtype != torch.float32:
        raise ConfigError(f"quantize a float32 model (this one is {dtype})")
    for name, module in model.named_modules():
        bad = mode == "int4" and isinstance(module, nn.Linear) and int4_linear.check_shape(module.in_features)
        if bad:
            raise ConfigError(f"int4 cannot quantize layer {name}: {bad}")


def replace_linear_layers(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module]) -> None:
    """Put `make(name, layer)` in place of every nn.Linear of `model` (one at a time: the float
    weights of each can go as soon as it is replaced)."""
    targets = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, getattr(parent, child)))


def quantize(model: CodeGenForCausalLM, mode: str | None) -> CodeGenForCausalLM:
    """`model` quantized in place by `mode`: None (left as it is), "int8" or "int4" (CPU, float32).

    Every linear layer (those of the blocks and the LM head) is replaced; the embedding stays in
    floating point (it is read one row per token), and so does the model's dtype, which the KV
    cache and the non-linear parts keep using. Everything is checked before anything changes.
    Loading with `load(..., quantize=mode)` does the same layer by layer, never holding all the
    float weights at once.
    """
    if mode is None:
        return model
    make = layer_quantizer(mode)
    check_quantizable(model, mode, model.device, model.dtype)
    replace_linear_layers(model, lambda name, layer: make(layer))
    return model

