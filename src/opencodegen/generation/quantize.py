"""Int8 weight-only quantization of the linear layers, for bandwidth-bound decoding on CPU.

Decoding one token reads every weight once, so on CPU its speed is set by memory bandwidth:
int8 weights move a quarter of fp32's bytes. Each output row keeps one scale (symmetric, per
channel); activations are rounded to bfloat16 for the matmul, everything else (LayerNorm, GELU,
attention, residuals, KV cache) stays in the model's dtype. Few rows (decode) use PyTorch's
int8 matrix-vector kernel; many rows (prefill) dequantize the layer to bfloat16 for one GEMM.
"""

from __future__ import annotations

import torch
from torch import nn

from opencodegen.errors import ConfigError
from opencodegen.model import CodeGenForCausalLM

# Up to this many rows the int8 kernel wins; beyond, one bf16 GEMM on dequantized weights does.
_KERNEL_MAX_ROWS = 16


class Int8Linear(nn.Module):
    """A Linear with int8 weights [out, in] and one bfloat16 scale per output row."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        # bf16 scales (the kernel's dtype), nudged up so that rounding never lets |w / scale| pass 127
        scale = weight.abs().amax(1).clamp(min=1e-30) / 127
        scale = (scale * (1 + 2**-7)).to(torch.bfloat16)
        quantized = torch.round(weight / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def dequantized(self) -> torch.Tensor:
        return self.weight_int8.to(torch.bfloat16) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if rows.shape[0] <= _KERNEL_MAX_ROWS:
            out = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale)
        else:
            out = rows @ self.dequantized().T
        out = out.to(x.dtype)
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize_int8(model: CodeGenForCausalLM) -> CodeGenForCausalLM:
    """Replace the linear layers of every block and the LM head by `Int8Linear`, in place (CPU only).

    The embedding stays in floating point (it is read one row per token), and so does the model's
    dtype, which the KV cache and the non-linear parts keep using.
    """
    if model.device.type != "cpu":
        raise ConfigError("int8 weight-only quantization is for CPU decoding; use bfloat16/float16 on GPU")
    if model.dtype != torch.float32:
        raise ConfigError(f"quantize a float32 model (this one is {model.dtype})")
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(module))
    return model
