"""Where CPU inference leaves PyTorch's default path: the one place that picks a native kernel.

Decoding multiplies every weight by a few rows and attends one new token per row, work that
PyTorch's CPU ops do at a fraction of the memory bandwidth. Each function here returns the
result of a faster path, or None where none applies (GPU, autograd, a dtype or shape a kernel
does not take, no kernel on this machine); the model then runs plain PyTorch.
"""

from __future__ import annotations

import torch

from opencodegen.kernels import decode_attention, small_batch_linear

# fp32 rows for which MKL's W @ xᵀ beats x @ Wᵀ where the small-batch kernel does not run; one
# row stays on the default path, which MKL runs as a matrix-vector product.
TRANSPOSED_ROWS = (4, 64)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """x [..., K] @ weight [N, K]ᵀ + bias on the CPU without autograd: the small-batch kernel, else the
    transposed product for fp32 `TRANSPOSED_ROWS`; None otherwise (use `F.linear`)."""
    if x.device.type != "cpu" or torch.is_grad_enabled():
        return None
    n, k = weight.shape
    rows = x.numel() // k
    flat = x.reshape(rows, k)
    out = None
    if small_batch_linear.applies(rows, x.dtype):
        out = small_batch_linear.linear(flat.contiguous(), weight, bias)
    if out is None and x.dtype == torch.float32 and TRANSPOSED_ROWS[0] <= rows <= TRANSPOSED_ROWS[1]:
        xt = flat.T
        out = (torch.mm(weight, xt) if bias is None else torch.addmm(bias[:, None], weight, xt)).T
    return None if out is None else out.reshape(*x.shape[:-1], n)


def attention(
    qkv: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], cache, layer: int, mask: torch.Tensor | None
) -> torch.Tensor | None:
    """A decode step's attention output [B, 1, H * D] from qkv [B, 1, 3, H, D] (before the rotary
    embedding) by kernels/decode_attention.c, which also stores this step's k and v in `cache` (a
    model.KVCache, duck-typed: kernels sit below the model); None where the kernel does not apply.

    The kernel reads one layer's `keys`/`values` only, so a cache holding some positions elsewhere
    (`offset` > 0: a shared prompt) is left to PyTorch.
    """
    if qkv.device.type != "cpu" or cache.offset:
        return None
    # `linear`'s transposed product hands back a transposed view; the kernel reads rows in place
    qkv = qkv.contiguous()
    return decode_attention.attend(qkv, *rotary, cache.keys[layer], cache.values[layer], cache.length, mask)
