"""`x @ weight.T + bias` for a few rows on AVX-512 CPUs, fp32 or bf16: a C kernel compiled on first use.

Decoding a few sequences (n samples of a prompt, a small batch) multiplies every weight by a
handful of rows and is bound by reading the weights. PyTorch streams them well below the
machine's bandwidth there; `small_batch_linear.c` reads each weight once. Measured on the linear
layers of one 350M decode step (2 threads, paired rounds; `ROWS` keeps where the kernel wins):
  fp32, 2 … 8 rows: 55-70 ms against MKL's 90-105 ms (its GEMM reads at about half the speed of
      its one-row matrix-vector product, which the kernel only matches: one row stays with MKL);
  bf16, 1 … 4 rows: 27-37 ms against 39-60 ms for PyTorch's bf16 path (equal from 8 rows on).
The bf16 kernel widens the weights to fp32 exactly, multiplies them with the activations in fp32
and rounds each output to bf16, as PyTorch's bf16 matmul does.

The C source ships with the package. The first call compiles it with the system C compiler ($CC,
else cc) into ~/.cache/opencodegen/kernels, under a name made from the source, flags and compiler
(a cached library that does not load is rebuilt). Where it cannot run — not Linux on x86-64, no
AVX-512, no compiler, or OPENCODEGEN_CPU_KERNEL=0 — `linear` returns None, callers use PyTorch,
and the reason is logged once (`status()` tells it too).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from opencodegen.user_cache import user_cache_dir

SOURCE = Path(__file__).with_suffix(".c")
FLAGS = ("-O3", "-mavx512f", "-mfma", "-fopenmp", "-shared", "-fPIC")
ROWS = {torch.float32: (2, 8), torch.bfloat16: (1, 4)}  # weight dtype -> rows where the kernel is faster
LANES = 16  # the reduced dimension must be a multiple of this
SWITCH = "OPENCODEGEN_CPU_KERNEL"  # "0" turns the kernel off
COMPILE_TIMEOUT_S = 120

log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "functions": {dtype: ctypes function}, or None once unavailable
_reason: list[str] = []  # why it is unavailable


def cache_dir() -> Path:
    return user_cache_dir() / "kernels"


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_has_avx512() -> bool:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return "avx512f" in flags.split()


def unavailable_reason() -> str | None:
    """Why the kernel cannot be used on this machine, or None (compilation may still fail)."""
    if os.environ.get(SWITCH, "1") == "0":
        return f"turned off ({SWITCH}=0)"
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"built for Linux on x86-64 only (this is {platform.system()} on {platform.machine()})"
    if not _cpu_has_avx512():
        return "the CPU has no AVX-512"
    if compiler() is None:
        return "no C compiler found (install gcc or set CC)"
    return None


def build(force: bool = False) -> Path:
    """Compile the kernel into the cache unless it is there already; return the library's path."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc or set CC)")
    key = hashlib.sha256(SOURCE.read_bytes() + repr((FLAGS, cc)).encode()).hexdigest()[:16]
    target = cache_dir() / f"small_batch_linear-{key}.so"
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=".building-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", partial], capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)  # atomic: concurrent builders leave one complete file
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _load() -> object | None:
    reason = unavailable_reason()
    if reason is not None:  # expected on this machine: say it quietly
        _reason.append(reason)
        log.info("small-batch linear kernel not used: %s", reason)
        return None
    try:
        try:
            library = ctypes.CDLL(str(build()))
        except OSError:  # a damaged cached file: rebuild it once
            library = ctypes.CDLL(str(build(force=True)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # unexpected: a slower decode follows
        _reason.append(f"could not be built: {exc}")
        log.warning("small-batch linear kernel not used (decoding a few sequences is slower): %s", _reason[-1])
        return None
    functions = {torch.float32: library.small_batch_linear, torch.bfloat16: library.small_batch_linear_bf16}
    for function in functions.values():
        function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
        function.restype = ctypes.c_int
    return functions


def _functions() -> dict[torch.dtype, object] | None:
    with _lock:
        if "functions" not in _loaded:
            _loaded["functions"] = _load()
        return _loaded["functions"]  # type: ignore[return-value]


def status() -> str:
    """Either "on" or "off: <reason>" (loads the kernel if that was not tried yet)."""
    return "on" if _functions() is not None else f"off: {_reason[-1]}"


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
    functions = _functions()
    if functions is None:
        return None
    x32 = x.float()  # the kernel reads fp32 activations (bf16 ones widen exactly); kept alive for the call
    y = torch.empty(rows, n, dtype=dtype)
    code = functions[dtype](x32.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(),  # type: ignore[operator]
                            y.data_ptr(), rows, n, k, torch.get_num_threads())  # fmt: skip
    return y if code == 0 else None
