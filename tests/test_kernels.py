"""The small-batch fp32 linear kernel: numerics, the shapes it declines, threads, and its build cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from opencodegen.kernels import small_batch_linear as kernel
from opencodegen.model import Linear

needs_kernel = pytest.mark.skipif(kernel.unavailable_reason() is not None,
                                  reason=f"kernel unavailable here: {kernel.unavailable_reason()}")  # fmt: skip


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """The kernel module as before its first use, building into an empty cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kernel, "_loaded", {})
    monkeypatch.setattr(kernel, "_reason", [])
    return tmp_path / "opencodegen" / "kernels"


@needs_kernel
@pytest.mark.parametrize("rows", range(2, 9))
@pytest.mark.parametrize("n, k", [(1, 16), (3, 64), (257, 1040), (64, 4096)])
def test_matches_torch(rows, n, k):
    gen = torch.Generator().manual_seed(rows * 1000 + n)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((rows, k), (n, k), (n,)))
    for bias in (b, None):
        got = kernel.linear(x, w, bias)
        assert got is not None and got.shape == (rows, n)
        torch.testing.assert_close(got, F.linear(x, w, bias), rtol=1e-5, atol=1e-4 * k**0.5)


@needs_kernel
def test_result_does_not_depend_on_threads():
    x, w, b = torch.randn(8, 1024), torch.randn(999, 1024), torch.randn(999)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel.linear(x, w, b)
        torch.set_num_threads(max(2, threads))
        many = kernel.linear(x, w, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_declines_what_it_does_not_handle():
    w = torch.randn(32, 64)
    declined = [
        (torch.randn(1, 64), w, None),  # one row: MKL's matrix-vector path is as fast
        (torch.randn(9, 64), w, None),  # more rows than the kernel's registers hold
        (torch.randn(4, 24), torch.randn(32, 24), None),  # K not a multiple of 16
        (torch.randn(4, 64), torch.randn(64, 32).T, None),  # weight not contiguous
        (torch.randn(4, 64, dtype=torch.float64), w.double(), None),
        (torch.randn(4, 64), w, torch.randn(31)),  # bias of the wrong length
        (torch.randn(4, 64), torch.randn(32, 128), None),  # mismatched K
    ]
    for x, weight, bias in declined:
        assert kernel.linear(x, weight, bias) is None


@needs_kernel
def test_linear_layer_agrees_with_and_without_kernel(monkeypatch):
    layer = Linear(256, 96)
    x = torch.randn(2, 3, 256)  # 6 rows
    with torch.no_grad():
        fast = layer(x)
        monkeypatch.setattr(kernel, "linear", lambda *args: None)
        plain = layer(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_switch_turns_it_off(fresh_kernel, monkeypatch):
    monkeypatch.setenv(kernel.SWITCH, "0")
    assert kernel.status() == f"off: turned off ({kernel.SWITCH}=0)"
    assert kernel.linear(torch.randn(4, 64), torch.randn(8, 64), None) is None
    assert not fresh_kernel.exists()  # nothing was compiled


@needs_kernel
def test_a_failing_compiler_leaves_torch_in_charge(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", "false")
    assert kernel.linear(torch.randn(4, 64), torch.randn(8, 64), None) is None
    assert kernel.status().startswith("off: could not be built: false failed")
    assert not list(fresh_kernel.glob("*"))  # no partial library left behind


@needs_kernel
def test_damaged_cached_library_is_rebuilt(fresh_kernel):
    built = kernel.build()
    assert built.parent == fresh_kernel and built.is_file()
    built.write_bytes(b"not a shared library")
    x, w = torch.randn(3, 64), torch.randn(5, 64)
    torch.testing.assert_close(kernel.linear(x, w, None), x @ w.T)
    assert kernel.status() == "on" and built.read_bytes()[:4] == b"\x7fELF"
