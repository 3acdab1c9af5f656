"""fp32 `x @ weight.T + bias` for 2 … 8 rows on AVX-512 CPUs: a C kernel compiled on first use.

Decoding a few sequences (n samples of a prompt, a small batch) multiplies every weight by a
handful of rows and is bound by reading the weights. MKL's fp32 GEMM streams them at about half
its matrix-vector speed there (350M shapes, 2 threads, all linear layers of a decode step: 90-105
ms for 2 … 8 rows against 40-55 ms for one row); `small_batch_linear.c` reads each weight once
(55-70 ms), which makes 8-sample decoding about 1.3x faster end to end.

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

SOURCE = Path(__file__).with_suffix(".c")
FLAGS = ("-O3", "-mavx512f", "-mfma", "-fopenmp", "-shared", "-fPIC")
MIN_ROWS, MAX_ROWS = 2, 8
LANES = 16  # the reduced dimension must be a multiple of this
SWITCH = "OPENCODEGEN_CPU_KERNEL"  # "0" turns the kernel off
COMPILE_TIMEOUT_S = 120

log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "function": the ctypes function, or None once it proved unavailable
_reason: list[str] = []  # why it is unavailable


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "opencodegen" / "kernels"


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
    if reason is None:
        try:
            try:
                library = ctypes.CDLL(str(build()))
            except OSError:  # a damaged cached file: rebuild it once
                library = ctypes.CDLL(str(build(force=True)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            reason = f"could not be built: {exc}"
    if reason is not None:
        _reason.append(reason)
        log.info("small-batch linear kernel not used: %s", reason)
        return None
    function = library.small_batch_linear
    function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _function() -> object | None:
    with _lock:
        if "function" not in _loaded:
            _loaded["function"] = _load()
        return _loaded["function"]


def status() -> str:
    """Either "on" or "off: <reason>" (loads the kernel if that was not tried yet)."""
    return "on" if _function() is not None else f"off: {_reason[-1]}"


def _plain(t: torch.Tensor) -> bool:
    return t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """x [M, K] @ weight [N, K]ᵀ + bias [N], or None where the kernel does not apply (callers then
    use torch): M outside 2 … 8, K not a multiple of 16, tensors that are not contiguous fp32 on the
    CPU, or no kernel on this machine. No autograd: call it without gradients."""
    if x.dim() != 2 or weight.dim() != 2 or not MIN_ROWS <= x.shape[0] <= MAX_ROWS:
        return None
    (rows, k), n = x.shape, weight.shape[0]
    if k % LANES or weight.shape[1] != k or not (_plain(x) and _plain(weight)):
        return None
    if bias is not None and (bias.shape != (n,) or not _plain(bias)):
        return None
    function = _function()
    if function is None:
        return None
    y = torch.empty(rows, n)
    code = function(x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),  # type: ignore[operator]
                    rows, n, k, torch.get_num_threads())  # fmt: skip
    return y if code == 0 else None
