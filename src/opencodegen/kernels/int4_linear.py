"""4-bit weights for CPU decoding: packing, and `x @ Wᵀ + b` with the AVX-512 VNNI kernel.

Decoding reads every weight once per token, so fewer bytes per weight means more tokens per
second. Here a weight takes 4.5 bits: groups of `GROUP` inputs of one output row share an fp16
scale d, and each weight is d * q with q in -8 … 7 (d is chosen so that the group's largest
magnitude is exactly -8 d; "round to nearest" for the rest). `int4_linear.c` multiplies them
with activations quantized per call to int8 (one scale per row, max|x| / 127) in exact integer
dot products per group, summed in fp32. The kernel is compute-bound from a few rows on; from
`MATMUL_ROWS` rows on, on CPUs with AMX, the weights are expanded to bf16 for PyTorch's matmul
instead. There is no PyTorch fallback for the kernel (it would be slower than fp32): without
it `linear` raises, and `quantize.py` refuses int4 up front.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from opencodegen.kernels.native import NativeLibrary, cpu_flags

GROUP = 32  # inputs per scale
BLOCK = 128  # inputs per 64-byte block of packed weights: K must be a multiple of this
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx512bf16", "-mf16c", "-mfma", "-fopenmp",
         "-shared", "-fPIC")
CPU_NEEDS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "f16c")
PACK_ROWS = 4096  # rows quantized at a time (bounds the temporary memory for large matrices)
# From this many rows on (prefill, large batches), where the CPU has AMX, `linear` turns the
# weights into bf16 and lets PyTorch (oneDNN) multiply, which beats the compute-bound kernel
# there. The rows then meet bf16 activations and weights (fp32 sums, the product rounded to
# bf16) instead of int8 activations, at the same loss on the default model.
MATMUL_ROWS = 48
MATMUL_CPU_NEEDS = {"amx_bf16", "avx512_bf16"}


def _bind(library: ctypes.CDLL) -> dict[str, object]:
    functions = {"linear": library.int4_linear, "dequantize_bf16": library.int4_dequantize_bf16}
    functions["linear"].argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] * 3 + [ctypes.c_int]
    functions["dequantize_bf16"].argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 2 + [ctypes.c_int]
    for function in functions.values():
        function.restype = ctypes.c_int
    return functions


LIBRARY = NativeLibrary(Path(__file__).with_suffix(".c"), FLAGS, CPU_NEEDS, _bind, logging.getLogger(__name__),
                        "int4 quantization is unavailable")


def check_shape(in_features: int) -> str | None:
    """Why a layer with `in_features` inputs cannot be packed, or None."""
    if in_features % BLOCK:
        return f"its {in_features} inputs are not a multiple of {BLOCK}"
    return None


def pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `weight` [N, K] to (packed [N, K/2] uint8, scales [N, K/GROUP] fp16).

    Block b of a row holds inputs 128 b … 128 b + 127 in 64 bytes: byte 16 g + p has q + 8 of
    input 128 b + 32 g + p in its low nibble and of input 128 b + 32 g + 16 + p in its high one.
    """
    n, k = weight.shape
    reason = check_shape(k)
    if reason:
        raise ValueError(f"cannot pack a [{n}, {k}] weight: {reason}")
    packed = torch.empty(n, k // 2, dtype=torch.uint8)
    scales = torch.empty(n, k // GROUP, dtype=torch.float16)
    for start in range(0, n, PACK_ROWS):
        rows = weight[start : start + PACK_ROWS].detach().float().reshape(-1, k // GROUP, GROUP)
        extreme = rows.gather(-1, rows.abs().argmax(-1, keepdim=True))  # signed, largest magnitude
        scale = (extreme / -8).half()  # stored in fp16; the codes are made against the stored value
        inverse = torch.where(scale == 0, 0.0, 1.0 / scale.float())
        codes = (rows * inverse).round_().clamp_(-8, 7).add_(8).to(torch.uint8)
        codes = codes.reshape(-1, k // BLOCK, 4, 2, 16)  # block, group, half, position
        packed[start : start + PACK_ROWS] = (codes[:, :, :, 0] | (codes[:, :, :, 1] << 4)).reshape(-1, k // 2)
        scales[start : start + PACK_ROWS] = scale.reshape(-1, k // GROUP)
    return packed, scales


def unpack(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The fp32 weight [N, K] that `pack` stored (each weight d * q)."""
    n, k = packed.shape[0], packed.shape[1] * 2
    blocks = packed.reshape(n, k // BLOCK, 4, 16)
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=3).reshape(n, k // GROUP, GROUP)
    return ((codes.float() - 8) * scales.float()[..., None]).reshape(n, k)


def linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] fp32 @ the packed weight [N, K]ᵀ + bias [N] fp32 -> [M, N] fp32 (no autograd): the
    kernel, or from MATMUL_ROWS rows on, where the CPU has AMX, a bf16 matmul of the weights."""
    functions = LIBRARY.functions()
    if functions is None:
        raise RuntimeError(f"the int4 kernel is {LIBRARY.status()}")
    if any(t.device.type != "cpu" for t in (x, packed, scales, *(() if bias is None else (bias,)))):
        raise ValueError("int4 layers run on the CPU (quantize for CPU decoding; use bfloat16/float16 on a GPU)")
    (rows, k), n = x.shape, packed.shape[0]
    if packed.shape != (n, k // 2) or scales.shape != (n, k // GROUP) or check_shape(k):
        raise ValueError(f"x {list(x.shape)} does not fit packed weights {list(packed.shape)} with scales "
                         f"{list(scales.shape)} (K must be a multiple of {BLOCK})")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape [{n}], got {list(bias.shape)}")
    if rows >= MATMUL_ROWS and _has_bf16_matmul():
        y = torch.matmul(x.bfloat16(), dequantize_bf16(packed, scales).T).float()
        return y if bias is None else y.add_(bias.float())
    # every operand bound to a name: it must outlive the call
    x = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
    packed, scales = packed.contiguous(), scales.contiguous()
    bias = None if bias is None else bias.float().contiguous()
    y = torch.empty(rows, n)
    code = functions["linear"](x.data_ptr(), packed.data_ptr(), scales.data_ptr(), None if bias is None else bias.data_ptr(),  # type: ignore[operator]
                    y.data_ptr(), rows, n, k, torch.get_num_threads())
    if code != 0:
        raise (MemoryError if code == -2 else ValueError)(f"int4 kernel failed with code {code}")
    return y


@functools.cache
def _has_bf16_matmul() -> bool:
    return MATMUL_CPU_NEEDS <= cpu_flags()


def dequantize_bf16(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The packed weight as bf16 [N, K] (each d * q rounded to nearest even), made by the kernel."""
    functions = LIBRARY.functions()
    if functions is None:
        raise RuntimeError(f"the int4 kernel is {LIBRARY.status()}")
    packed, scales = packed.contiguous(), scales.contiguous()
    out = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.bfloat16)
    code = functions["dequantize_bf16"](packed.data_ptr(), scales.data_ptr(), out.data_ptr(), out.shape[0],  # type: ignore[index]
                                        out.shape[1], torch.get_num_threads())
    if code != 0:
        raise ValueError(f"int4 dequantization failed with code {code}")
    return out
