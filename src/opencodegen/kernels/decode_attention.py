"""One decode step's attention in one native call: rotary, cache write, softmax(q kᵀ) v.

A decode step runs ~15 small PyTorch ops per layer for its attention (rotary embedding, two
cache writes, two matmuls, scale, softmax, reshapes; in bf16 also a conversion of every cached
key and value to fp32), each costing a dispatch that is long against the work;
`decode_attention.c` does them in one call per layer, for every row and head (the gain is in
benchmarks/README.md). Keys are cached bit-identically to the PyTorch path; attention outputs
agree within a few fp32 ulps (bf16: the same value, or one bf16 step apart where the fp32 sum
lands near a rounding boundary). Used for fp32 and bf16 on CPU where the kernel builds (see
native.py); `attend` returns None everywhere else and the model uses PyTorch.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from opencodegen.kernels.native import NativeLibrary

FLAGS = ("-O3", "-mavx512f", "-mfma", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
MAX_HEAD_DIM = 256


def _bind(library: ctypes.CDLL) -> dict[torch.dtype, object]:
    functions = {torch.float32: library.decode_attention, torch.bfloat16: library.decode_attention_bf16}
    for function in functions.values():
        function.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_long] + [ctypes.c_void_p] * 2 + [ctypes.c_long] * 6
                             + [ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_int])
        function.restype = ctypes.c_int
    return functions


LIBRARY = NativeLibrary(Path(__file__).with_suffix(".c"), FLAGS, ("avx512f",), _bind, logging.getLogger(__name__),
                        "decoding is slower")


def _one_dtype_on_cpu(*tensors: torch.Tensor) -> bool:
    """All on the CPU, all fp32 or all bf16."""
    dtype = tensors[0].dtype
    return dtype in (torch.float32, torch.bfloat16) and all(t.dtype == dtype and t.device.type == "cpu" for t in tensors)


def attend(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int,
    mask: torch.Tensor | None,
) -> torch.Tensor | None:
    """Attention output [B, 1, H * D] of one new token per row, or None where the kernel does not apply.

    qkv [B, 1, 3, H, D] (q, k, v before the rotary embedding); cos, sin [B, 1, 1, 1, D] (the
    signed-sin table rows of each row's position); keys, values [B, H, L, D] (one layer of the
    cache; this step's k and v are written at position `start`); mask: None or booleans with
    B * (start + 1) elements (True = may attend). All fp32 or all bf16 (computed in fp32, with
    q and k rounded to bf16 after the rotary embedding and the output rounded, as PyTorch does).
    """
    B, T, three, H, D = qkv.shape
    if T != 1 or three != 3 or D % 16 or D > MAX_HEAD_DIM or torch.is_grad_enabled():
        return None
    if not (_one_dtype_on_cpu(qkv, cos, sin, keys, values) and qkv.is_contiguous()):
        return None
    if keys.shape != values.shape or keys.stride() != values.stride() or keys.shape[:2] != (B, H):
        return None
    if keys.stride(3) != 1 or keys.stride(2) != D or cos.stride(-1) != 1 or cos.stride() != sin.stride():
        return None
    if start >= keys.shape[2]:
        raise ValueError(f"KV cache overflow: {start + 1} tokens > capacity {keys.shape[2]}")
    if mask is not None:
        if mask.dtype != torch.bool or mask.numel() != B * (start + 1):
            return None
        mask = mask.reshape(B, start + 1).contiguous()  # bound to a name: it must outlive the call
    functions = LIBRARY.functions()
    if functions is None:
        return None
    out = torch.empty(B, 1, H * D, dtype=qkv.dtype)
    code = functions[qkv.dtype](qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), cos.stride(0), keys.data_ptr(), values.data_ptr(),  # type: ignore[operator]
                    keys.stride(0), keys.stride(1), B, H, D, start, None if mask is None else mask.data_ptr(),
                    D**-0.5, out.data_ptr(), torch.get_num_threads())
    return out if code == 0 else None
