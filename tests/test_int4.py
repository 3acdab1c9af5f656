"""Int4 weights: the packed format, the kernel's numerics against the same math in float64, the
shapes and machines it refuses, and generation with a quantized model."""

from __future__ import annotations

import copy
import json.decoder

import pytest
import torch
from torch import nn

from generation_helpers import make_model_dir, with_one_and_more_threads
from opencodegen import load
from opencodegen.cli import main
from opencodegen.errors import ConfigError
from opencodegen.generation import Generator, SamplingParams
from opencodegen.kernels import int4_linear as int4
from opencodegen.quantize import Int4Linear, quantize

needs_kernel = pytest.mark.skipif(int4.LIBRARY.unavailable_reason() is not None,
                                  reason=f"int4 kernel unavailable here: {int4.LIBRARY.unavailable_reason()}")


def quantized_activations(x: torch.Tensor) -> torch.Tensor:
    """x as the kernel sees it: per row, s * round(x / s) with s = max|x| / 127 (float64)."""
    amax = x.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, 0.0)  # fp32, as in the kernel
    return (x * inverse).round().double() * (amax / 127.0).double()


def test_pack_places_every_code_where_the_kernel_reads_it():
    weight = torch.zeros(2, 256)
    weight[1, 128 + 32 * 2 + 16 + 5] = -1.0  # block 1, group 2, high half, position 5
    packed, scales = int4.pack(weight)
    assert packed.shape == (2, 128) and packed.dtype == torch.uint8 and scales.shape == (2, 8)
    assert scales[1, 4 + 2] == 1 / 8 and (scales[0] == 0).all()  # the extreme is exactly -8 d
    expected = torch.full((2, 128), 0x88, dtype=torch.uint8)  # code 8 in both nibbles: zero
    expected[1, 64 + 16 * 2 + 5] = 0x08  # high nibble: code 0, i.e. -8
    assert torch.equal(packed, expected)


def test_pack_round_trips_representable_weights_and_bounds_the_error():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(-8, 8, (6, 512), generator=gen).float()
    codes[:, :: int4.GROUP] = -8  # every group holds its extreme at -8
    scales = (torch.rand(6, 512 // int4.GROUP, generator=gen) + 0.1).half()
    exact = codes * scales.float().repeat_interleave(int4.GROUP, dim=1)
    packed, got_scales = int4.pack(exact)
    assert torch.equal(got_scales, scales) and torch.equal(int4.unpack(packed, got_scales), exact)
    weight = torch.randn(64, 1024, generator=gen)
    packed, scales = int4.pack(weight)
    step = scales.float().abs().repeat_interleave(int4.GROUP, dim=1)
    error = (int4.unpack(packed, scales) - weight).abs()
    assert (error <= step * 1.001).all()  # within one step (the opposite extreme may clamp at +7)
    assert error.mean() <= 0.3 * step.mean()  # round to nearest: a quarter of a step on average


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9, 17, int4.MATMUL_ROWS - 1])
@pytest.mark.parametrize("n, k", [(1, 128), (33, 256), (100, 1024), (7, 4096)])
def test_kernel_equals_the_quantized_product(rows, n, k):
    gen = torch.Generator().manual_seed(rows * 100 + n)
    weight, x, bias = torch.randn(n, k, generator=gen) * 0.05, torch.randn(rows, k, generator=gen), torch.randn(n, generator=gen)
    if rows > 1:
        x[1] = 0.0  # an all-zero row: scale 0, no division by zero
    packed, scales = int4.pack(weight)
    product = quantized_activations(x) @ int4.unpack(packed, scales).double().T
    for b in (bias, None):
        expected = product + (b.double() if b is not None else 0.0)
        got = int4.linear(x, packed, scales, b)
        assert got.dtype == torch.float32 and got.shape == (rows, n)
        # integer dot products per group are exact; only the fp32 sums of ~k/32 terms round
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


@pytest.mark.skipif(int4.LIBRARY.unavailable_reason() is not None or not int4._has_bf16_matmul(),
                    reason="no int4 kernel or no AMX bf16 here")
@pytest.mark.parametrize("rows", [int4.MATMUL_ROWS, 64, 200])
def test_many_rows_multiply_the_same_weights_in_bf16(rows):
    gen = torch.Generator().manual_seed(rows)
    weight, x, bias = torch.randn(96, 1024, generator=gen) * 0.05, torch.randn(rows, 1024, generator=gen), torch.randn(96, generator=gen)
    packed, scales = int4.pack(weight)
    stored = int4.unpack(packed, scales)
    assert torch.equal(int4.dequantize_bf16(packed, scales), stored.bfloat16())  # each d * q rounded once
    xb, wb = x.bfloat16().double(), stored.bfloat16().double()
    got = int4.linear(x, packed, scales, bias)
    assert got.dtype == torch.float32 and got.shape == (rows, 96)
    # bf16 operands exactly; PyTorch's bf16 matmul rounds its result to bf16 (measured: errors up
    # to 2^-11 of sum |x| |w|; allowed: 2^-8)
    error = (got.double() - bias.double() - xb @ wb.T).abs()
    assert (error <= 2**-8 * (xb.abs() @ wb.abs().T)).all()
    # the kernel's int8 activations give nearly the same product (the weights are the same)
    kernel = torch.cat([int4.linear(x[i : i + 8], packed, scales, bias) for i in range(0, rows, 8)])
    assert (kernel - got).abs().max() <= 0.02 * got.abs().max()


@needs_kernel
def test_result_does_not_depend_on_threads():
    weight, x = torch.randn(999, 1024), torch.randn(8, 1024)
    packed, scales = int4.pack(weight)
    one, many = with_one_and_more_threads(lambda: int4.linear(x, packed, scales, None))
    assert torch.equal(one, many)


@needs_kernel
def test_bad_shapes_get_clear_errors():
    with pytest.raises(ValueError, match="not a multiple of 128"):
        int4.pack(torch.randn(4, 100))
    packed, scales = int4.pack(torch.randn(4, 256))
    with pytest.raises(ValueError, match="does not fit"):
        int4.linear(torch.randn(2, 128), packed, scales, None)
    with pytest.raises(ValueError, match=r"bias must have shape \[4\]"):
        int4.linear(torch.randn(2, 256), packed, scales, torch.randn(5))
    with pytest.raises(ValueError, match="run on the CPU"):  # never a GPU pointer into the kernel
        int4.linear(torch.randn(2, 256, device="meta"), packed, scales, None)


@needs_kernel
def test_int4_layer_and_model_generate(tmp_path):
    layer = nn.Linear(256, 96)
    q = Int4Linear(layer)
    x = torch.randn(3, 5, 256)
    with torch.no_grad():
        exact = layer(x)
        got = q(x)
    assert got.shape == exact.shape and (got - exact).abs().max() <= 0.1 * exact.abs().max()
    model, tok = load("default")
    quantized = quantize(copy.deepcopy(model), "int4")
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert sum(b.numel() for b in quantized.buffers() if b.dtype == torch.uint8) * 2 == sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    params = SamplingParams(n=2, max_new_tokens=8, temperature=0.5, seed=0, ignore_eos=True)
    [completions] = Generator(quantized, tok).generate(["def add(a, b):\n"], params)
    assert [len(c.token_ids) for c in completions] == [8, 8]


@needs_kernel
def test_int4_keeps_most_of_the_default_models_quality():
    """On trained weights (the embedded model, one stdlib file): measured +4.2 % loss and the fp32
    arg-max kept at 90 % of positions (int8: -0.1 %, 98 %)."""
    model, tok = load("default")
    quantized = quantize(copy.deepcopy(model), "int4")
    with open(json.decoder.__file__, encoding="utf-8") as f:
        ids = torch.tensor([tok.encode(f.read())[:512]])
    with torch.no_grad():
        exact, approx = model(ids).logits[0, :-1], quantized(ids).logits[0, :-1]
    loss = [torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item() for logits in (exact, approx)]
    assert loss[1] <= 1.07 * loss[0]
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.85


def test_refusals_change_nothing(tmp_path, monkeypatch):
    model, _ = load(str(make_model_dir(tmp_path)))  # the tiny preset: 64 inputs per layer
    if int4.LIBRARY.functions() is not None:
        with pytest.raises(ConfigError, match="int4 cannot quantize layer .*not a multiple of 128"):
            quantize(model, "int4")
        assert isinstance(model.lm_head, nn.Linear)
    monkeypatch.setattr(int4.LIBRARY, "_result", (None, "the CPU lacks avx512_vnni"))
    with pytest.raises(ConfigError, match="off: the CPU lacks avx512_vnni .*use --quantize int8"):
        quantize(model, "int4")
    with pytest.raises(ConfigError, match="known: int8, int4"):
        quantize(model, "int3")
    assert isinstance(model.lm_head, nn.Linear)


@needs_kernel
def test_generate_command_with_int4(capsys):
    assert main(["generate", "--model", "default", "--prompt", "def add(a, b):\n", "--quantize", "int4",
                 "--max-new-tokens", "4", "--temperature", "0", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["completions"][0]["token_ids"]) <= 4
