"""`x @ weight.T + bias` for a few rows on AVX-512 CPUs, fp32 or bf16: a C kernel compiled on first use.

Decoding a few sequences (n samples of a prompt, a small batch) multiplies every weight by a
handful of rows and is bound by reading the weights. PyTorch streams them well below the
machine's bandwidth there; `small_batch_linear.c` reads each weight once (one fp32 row: eight
weight rows per call, two accumulators each; one bf16 row: four). `ROWS` keeps the row counts
where it beats PyTorch (benchmarks/README.md has the figures). The bf16 kernel widens the
weights to fp32 exactly, multiplies them with the activations in fp32 and rounds each output to
bf16, as PyTorch's bf16 matmul does.

The C source is compiled on first use (see native.py). Where it cannot run — not Linux on
x86-64, no AVX-512, no compiler, or OPENCODEGEN_CPU_KERNEL=0 — `linear` returns None, callers use
PyTorch, and the reason is logged once (`status()` tells it too).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from opencodegen.kernels.native import NativeLibrary

FLAGS = ("-O3", "-mavx512f", "-mfma", "-fopenmp", "-shared", "-fPIC")
ROWS = {torch.float32: (1, 8), torch.bfloat16: (1, 4)}  # weight dtype -> rows where the kernel is faster
LANES = 16  # the reduced dimension must be a multiple of this


def _bind(library: ctypes.CDLL) -> dict[torch.dtype, object]:
    functions = {torch.float32: library.small_batch_linear, torch.bfloat16: library.small_batch_linear_bf16}
    for function in functions.values():
        function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
        function.restype = ctypes.c_int
    return functions


LIBRARY = NativeLibrary(Path(__file__).with_suffix(".c"), FLAGS, ("avx512f",), _bind, logging.getLogger(__name__),
                        "decoding a few sequences is slower")


def status() -> str:
    """Either "on" or "off: <reason>" (builds or loads the kernel if that was not tried yet)."""
    return LIBRARY.status()


def applies(rows: int, dtype: torch.dtype) -> bool:
    """Whether the kernel is the faster path for `rows` rows of `dtype` (see `ROWS`)."""
    low, high = ROWS.get(dtype, (1, 0))
    return low <= rows <= high


def _plain(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """x [M, K] @ weight [N, K]ᵀ + bias [N] in the weight's dtype, or None where the kernel does not
    apply (callers then use torch): a dtype or row count outside `ROWS`, K not a multiple of 16,
    tensors not contiguous on the CPU or of mixed dtypes, or no kernel on this machine. No
    autograd: call it without gradients."""
    dtype = weight.dtype
    if x.dim() != 2 or weight.dim() != 2 or not applies(x.shape[0], dtype):
        return None
    (rows, k), n = x.shape, weight.shape[0]
    if k % LANES or weight.shape[1] != k or not (_plain(x, dtype) and _plain(weight, dtype)):
        return None
    if bias is not None and (bias.shape != (n,) or not _plain(bias, dtype)):
        return None
    functions = LIBRARY.functions()
    if functions is None:
        return None
    x32 = x.float()  # the kernel reads fp32 activations (bf16 ones widen exactly); kept alive for the call
    y = torch.empty(rows, n, dtype=dtype)
    code = functions[dtype](x32.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(),  # type: ignore[operator]
                            y.data_ptr(), rows, n, k, torch.get_num_threads())
    return y if code == 0 else None
