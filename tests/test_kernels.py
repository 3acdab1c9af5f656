"""The small-batch linear kernel (fp32, bf16): numerics, the shapes it declines, threads, its build cache."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from generation_helpers import with_one_and_more_threads
from opencodegen.config import CodeGenConfig
from opencodegen.generation import Generator
from opencodegen.kernels import native
from opencodegen.kernels import small_batch_linear as kernel
from opencodegen.model import CodeGenForCausalLM, Linear

needs_kernel = pytest.mark.skipif(kernel.LIBRARY.unavailable_reason() is not None,
                                  reason=f"kernel unavailable here: {kernel.LIBRARY.unavailable_reason()}")


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """The kernel module as before its first use, building into an empty cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kernel.LIBRARY, "_result", None)
    return tmp_path / "opencodegen" / "kernels"


SHAPES = [(1, 16), (3, 64), (257, 1040), (64, 4096)]


def _operands(rows: int, n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(rows * 1000 + n)
    return tuple(torch.randn(*shape, generator=gen).to(dtype) for shape in ((rows, k), (n, k), (n,)))


# fp32: where the kernel runs 2 … 8 rows; bf16: 1 … 4 rows, the exact product rounded once to bf16
# (relative 2^-8); both plus fp32 summation error. (rtol, atol per sqrt(k)) against exact, against torch.
CASES = [(dtype, rows) for dtype, (low, high) in kernel.ROWS.items() for rows in range(low, high + 1)]
TOLERANCE = {torch.float32: ((1e-5, 1e-4), (1e-5, 1e-4)), torch.bfloat16: ((2**-8, 1e-4), (2**-7, 1e-3))}


@needs_kernel
@pytest.mark.parametrize("dtype, rows", CASES)
@pytest.mark.parametrize("n, k", SHAPES)
def test_matches_the_exact_product(dtype, rows, n, k):
    x, w, b = _operands(rows, n, k, dtype)
    (rtol, atol), (rtol_torch, atol_torch) = TOLERANCE[dtype]
    for bias in (b, None):
        got = kernel.linear(x, w, bias)
        assert got is not None and got.dtype == dtype and got.shape == (rows, n)
        exact = F.linear(x.double(), w.double(), None if bias is None else bias.double())
        torch.testing.assert_close(got.double(), exact, rtol=rtol, atol=atol * k**0.5)
        torch.testing.assert_close(got, F.linear(x, w, bias), rtol=rtol_torch, atol=atol_torch * k**0.5)


@needs_kernel
def test_bf16_rounding_and_special_values():
    w = torch.zeros(4, 16, dtype=torch.bfloat16)
    w[0, 0], w[1, 0], w[2, 0], w[3, 0] = float("inf"), float("nan"), 1.0, 1.0
    x = torch.zeros(1, 16, dtype=torch.bfloat16)
    x[0, 0] = 1.0
    # bf16 spacing above 1 is 2^-7: 1 + 2^-8 and 1 + 3 * 2^-8 are ties, rounded to the even neighbour
    bias = torch.tensor([0.0, 0.0, 2**-8, 3 * 2**-8], dtype=torch.bfloat16)
    got = kernel.linear(x, w, bias)[0].float()
    assert got[0] == float("inf") and got[1].isnan() and got[2] == 1.0 and got[3] == 1 + 2**-6


@needs_kernel
def test_result_does_not_depend_on_threads():
    x, w, b = torch.randn(8, 1024), torch.randn(999, 1024), torch.randn(999)
    one, many = with_one_and_more_threads(lambda: kernel.linear(x, w, b))
    assert torch.equal(one, many)


def test_declines_what_it_does_not_handle():
    w = torch.randn(32, 64)
    declined = [
        (torch.randn(9, 64), w, None),  # more rows than the kernel's registers hold
        (torch.randn(5, 64).bfloat16(), w.bfloat16(), None),  # bf16 from 5 rows: PyTorch is as fast
        (torch.randn(2, 64).bfloat16(), w, None),  # mixed dtypes
        (torch.randn(2, 64).half(), w.half(), None),  # fp16: no kernel
        (torch.randn(4, 24), torch.randn(32, 24), None),  # K not a multiple of 16
        (torch.randn(4, 64), torch.randn(64, 32).T, None),  # weight not contiguous
        (torch.randn(4, 64, dtype=torch.float64), w.double(), None),
        (torch.randn(4, 64), w, torch.randn(31)),  # bias of the wrong length
        (torch.randn(4, 64), torch.randn(32, 128), None),  # mismatched K
    ]
    for x, weight, bias in declined:
        assert kernel.linear(x, weight, bias) is None


@needs_kernel
@pytest.mark.parametrize("dtype, shape, tolerance", [(torch.float32, (2, 3), 1e-5), (torch.bfloat16, (1, 1), 2e-2)])
def test_linear_layer_agrees_with_and_without_kernel(monkeypatch, dtype, shape, tolerance):
    layer = Linear(256, 96).to(dtype)
    x = torch.randn(*shape, 256).to(dtype)
    with torch.no_grad():
        fast = layer(x)
        monkeypatch.setattr(kernel, "linear", lambda *args: None)
        plain = layer(x)
    assert fast.dtype == dtype and fast.shape == (*shape, 96)
    torch.testing.assert_close(fast, plain, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(fast, F.linear(x, layer.weight, layer.bias), rtol=tolerance, atol=tolerance)


def test_switch_turns_it_off(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setenv(native.SWITCH, "0")
    with caplog.at_level(logging.INFO, logger=kernel.__name__):
        assert kernel.status() == f"off: turned off ({native.SWITCH}=0)"
    assert kernel.linear(torch.randn(4, 64), torch.randn(8, 64), None) is None
    assert not fresh_kernel.exists()  # nothing was compiled
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # expected: no warning


@needs_kernel
def test_a_failing_compiler_leaves_torch_in_charge(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setenv("CC", "false")
    with caplog.at_level(logging.INFO, logger=kernel.__name__):
        assert kernel.linear(torch.randn(4, 64), torch.randn(8, 64), None) is None
    assert kernel.status().startswith("off: could not be built: false failed")
    assert not list(fresh_kernel.glob("*"))  # no partial library left behind
    assert [r.levelno for r in caplog.records] == [logging.WARNING]  # said once, loudly


@needs_kernel
def test_generator_builds_the_kernel_up_front(fresh_kernel):
    model = CodeGenForCausalLM(CodeGenConfig.from_preset("tiny"))
    Generator(model)
    assert len(list(fresh_kernel.glob("small_batch_linear-*.so"))) == 1  # built before any decoding


@needs_kernel
def test_damaged_cached_library_is_rebuilt(fresh_kernel):
    built = kernel.LIBRARY.build()
    assert built.parent == fresh_kernel and built.is_file()
    built.write_bytes(b"not a shared library")
    x, w = torch.randn(3, 64), torch.randn(5, 64)
    torch.testing.assert_close(kernel.linear(x, w, None), x @ w.T)
    assert kernel.status() == "on" and built.read_bytes()[:4] == b"\x7fELF"


@needs_kernel
def test_a_changed_header_rebuilds_the_library(fresh_kernel, tmp_path):
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    (source_dir / "value.h").write_text("#define VALUE 1\n")
    source = source_dir / "answer.c"
    source.write_text('#include "value.h"\nint answer(void) { return VALUE; }\n')
    library = native.NativeLibrary(source, ("-O1", "-shared", "-fPIC"), (), lambda lib: lib.answer,
                                   logging.getLogger(__name__), "nothing")
    first = library.build()
    (source_dir / "value.h").write_text("#define VALUE 2\n")
    second = library.build()
    assert first != second and first.is_file() and second.is_file()
    assert library.functions()() == 2  # the library built from the changed header
