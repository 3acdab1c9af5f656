"""The native decode-step attention: the same cache contents and outputs as the PyTorch path, the
cases it declines, and generation with and without it."""

from __future__ import annotations

import pytest
import torch

from opencodegen.config import CodeGenConfig
from opencodegen.generation import Generator, SamplingParams
from opencodegen.kernels import decode_attention
from opencodegen.model import CodeGenForCausalLM, KVCache, rotary_table
from opencodegen.model import heads as split_heads

needs_kernel = pytest.mark.skipif(decode_attention.LIBRARY.unavailable_reason() is not None,
                                  reason=f"kernel unavailable: {decode_attention.LIBRARY.unavailable_reason()}")


def _step_inputs(batch: int, heads: int, head_dim: int, cached: int, rotary_dim: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
    """A cache holding `cached` random tokens, one step's qkv, and each row's rotary rows (all in `dtype`,
    as in a model of that dtype)."""
    gen = torch.Generator().manual_seed(seed)
    config = CodeGenConfig(n_layer=1, n_embd=heads * head_dim, n_head=heads, rotary_dim=rotary_dim, n_positions=64)
    cache = KVCache(config, batch, cached + 5, dtype, "cpu")
    for t in (*cache.keys, *cache.values):
        t.copy_(torch.randn(t.shape, generator=gen))
    cache.length = cached
    positions = torch.randint(cached, 60, (batch, 1), generator=gen)
    cos, sin = rotary_table(64, rotary_dim, head_dim).to(dtype)[positions][:, :, :, None, None].unbind(2)
    qkv = (torch.randn(batch, 1, 3, heads, head_dim, generator=gen) * 3).to(dtype)
    return cache, qkv, (cos, sin)


def _clone(cache: KVCache) -> KVCache:
    twin = KVCache.__new__(KVCache)
    twin.keys, twin.values = [k.clone() for k in cache.keys], [v.clone() for v in cache.values]
    twin.length, twin.offset = cache.length, cache.offset
    return twin


@needs_kernel
@pytest.mark.parametrize("batch, heads, head_dim, cached, rotary_dim", [(1, 4, 16, 0, 8), (3, 2, 64, 37, 32),
                                                                          (2, 3, 256, 20, 64), (5, 1, 80, 50, 80)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_the_pytorch_step(batch, heads, head_dim, cached, rotary_dim, masked, dtype):
    cache, qkv, rotary = _step_inputs(batch, heads, head_dim, cached, rotary_dim, dtype=dtype)
    mask = None
    if masked:  # left padding: row r may not see its first r positions (each row still sees itself)
        mask = torch.ones(batch, 1, 1, cached + 1, dtype=torch.bool)
        for row in range(batch):
            mask[row, ..., : min(row, cached)] = False
    reference_cache = _clone(cache)
    with torch.no_grad():
        got = decode_attention.attend(qkv, *rotary, cache.keys[0], cache.values[0], cached, mask)
        q, k, v = split_heads(qkv, rotary)  # the PyTorch decode step
        expected = reference_cache.attend(0, q, k, v, mask).to(dtype).transpose(1, 2).reshape(batch, 1, -1)
    assert got is not None and got.shape == (batch, 1, heads * head_dim) and got.dtype == dtype
    assert torch.equal(cache.keys[0], reference_cache.keys[0])  # the rotary embedding rounds identically
    assert torch.equal(cache.values[0], reference_cache.values[0])
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:  # the same fp32 result up to summation order, then rounded: equal or one bf16 step apart
        step = expected.float().abs().clamp_min(2.0**-126) * 2.0**-7
        assert ((got.float() - expected.float()).abs() <= step).all()
        assert (got == expected).float().mean() > 0.9


@needs_kernel
def test_declines_what_it_does_not_handle():
    cache, qkv, rotary = _step_inputs(2, 2, 32, 10, 16)
    keys, values = cache.keys[0], cache.values[0]
    with torch.no_grad():
        assert decode_attention.attend(qkv.bfloat16(), *rotary, keys, values, 10, None) is None  # mixed dtypes
        half = [t.half() for t in (qkv, *rotary, keys, values)]
        assert decode_attention.attend(*half, 10, None) is None  # fp16: no kernel
        assert decode_attention.attend(qkv[..., :24].contiguous(), *rotary, keys[..., :24], values[..., :24], 10,
                                       None) is None  # head_dim not a multiple of 16
        assert decode_attention.attend(qkv.transpose(3, 4).contiguous().transpose(3, 4), *rotary, keys, values, 10,
                                       None) is None  # not contiguous
        assert decode_attention.attend(qkv, *rotary, keys, values, 10, torch.ones(2, 11)) is None  # mask not bool
        assert decode_attention.attend(qkv, *rotary, keys, values, 10, torch.ones(2, 9, dtype=torch.bool)) is None
        with pytest.raises(ValueError, match="KV cache overflow"):
            decode_attention.attend(qkv, *rotary, keys, values, keys.shape[2], None)
    assert decode_attention.attend(qkv, *rotary, keys, values, 10, None) is None  # autograd on


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generation_is_the_same_with_and_without_the_kernel(monkeypatch, dtype):
    torch.manual_seed(0)
    model = CodeGenForCausalLM(CodeGenConfig.from_preset("tiny")).eval().to(dtype)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaked distributions: no near-ties between tokens
    prompts = [[5, 9, 11, 300, 2, 7, 7, 1], [40, 41], [3, 2, 1, 0, 900]]  # different lengths: left padding
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True, logprobs=0)
    fused = Generator(model).generate_ids(prompts, params)
    monkeypatch.setattr(decode_attention, "attend", lambda *args: None)
    plain = Generator(model).generate_ids(prompts, params)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # bf16: hidden states rounded at every layer
    for a, b in zip(fused, plain):
        assert a[0].token_ids == b[0].token_ids
        torch.testing.assert_close([p.logprob for p in a[0].logprobs], [p.logprob for p in b[0].logprobs],
                                   rtol=tolerance, atol=tolerance)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 8, 64])
def test_every_decode_step_of_a_copied_batch_takes_the_kernel(monkeypatch, rows):
    """fp32 batches of 4-64 rows get their qkv from a transposed product (a non-contiguous view):
    the kernel must still run every layer of every step."""
    torch.manual_seed(0)
    model = CodeGenForCausalLM(CodeGenConfig.from_preset("tiny")).eval()
    taken = []
    attend = decode_attention.attend
    monkeypatch.setattr(decode_attention, "attend", lambda *args: taken.append(attend(*args) is not None) or None)
    params = SamplingParams(n=rows, temperature=0.8, max_new_tokens=6, ignore_eos=True, seed=0)
    Generator(model, share_prefix=False).generate_ids([[5, 9, 11, 300, 2]], params)
    steps = params.max_new_tokens - 1  # the first token comes from the prefill
    assert taken == [True] * (steps * model.config.n_layer)
