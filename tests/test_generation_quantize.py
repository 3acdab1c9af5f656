"""Int8 weight-only quantization: error bounds, both matmul paths, and generation with it."""

import copy

import pytest
import torch
from torch import nn

from generation_helpers import make_model_dir, one_thread  # noqa: F401 (fixture)
from opencodegen import load
from opencodegen.errors import ConfigError
from opencodegen.generation import Generator, SamplingParams
from opencodegen.generation.quantize import Int8Linear, quantize_int8

pytestmark = pytest.mark.usefixtures("one_thread")


def test_int8_linear_is_close_and_both_paths_agree():
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(256, 96)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(96, 256, generator=gen) * 0.05)
        linear.bias.copy_(torch.randn(96, generator=gen))
    q = Int8Linear(linear)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.abs().max() <= 127
    # one scale per row: every weight is within half a quantization step
    step = q.scale.float()[:, None]
    assert ((q.weight_int8.float() * step - linear.weight).abs() <= 0.5 * step * (1 + 1e-5)).all()
    x = torch.randn(3, 40, 256, generator=gen)  # 120 rows: the dequantize + GEMM path
    with torch.no_grad():
        exact, many = linear(x), q(x)
        few = torch.cat([q(x[:, i : i + 1]) for i in range(40)], 1)  # 3 rows at a time: the int8 kernel
    assert many.shape == exact.shape == (3, 40, 96) and many.dtype == torch.float32
    scale = exact.abs().max()
    assert (many - exact).abs().max() <= 0.02 * scale
    assert (few - many).abs().max() <= 0.01 * scale


def test_quantized_model_generates_close_to_fp32(tmp_path):
    model, tok = load(str(make_model_dir(tmp_path)))
    q = quantize_int8(copy.deepcopy(model))
    assert q.dtype == torch.float32 and not any(isinstance(m, nn.Linear) for m in q.modules())
    ids = torch.tensor([tok.encode("def add(a, b):\n    return a + b\n")])
    with torch.no_grad():
        exact, approx = model(ids).logits, q(ids).logits
    assert (approx - exact).abs().max() <= 0.05 * exact.abs().max()
    params = SamplingParams(n=2, max_new_tokens=8, temperature=0.5, seed=0, ignore_eos=True)
    [completions] = Generator(q, tok).generate(["def add(a, b):\n"], params)
    assert [len(c.token_ids) for c in completions] == [8, 8]


def test_quantize_refuses_non_float32(tmp_path):
    model, _ = load(str(make_model_dir(tmp_path)), dtype="bfloat16")
    with pytest.raises(ConfigError, match="float32"):
        quantize_int8(model)
