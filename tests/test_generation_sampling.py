"""Sampling parameters and the token choice: greedy, temperature, top-k, top-p, per-row independence."""

import dataclasses

import pytest
import torch

from generation_helpers import one_thread  # noqa: F401 (fixture)
from opencodegen.errors import GenerationError
from opencodegen.generation import SamplingParams
from opencodegen.generation.sampling import (
    TokenSampler,
    sample_tokens,
    sequence_seed,
    sequence_uniforms,
    token_logprobs,
)

pytestmark = pytest.mark.usefixtures("one_thread")
DRAWS = 40_000


def test_defaults_are_the_demo_sampler_without_top_k():
    p = SamplingParams()
    assert (p.n, p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop, p.truncate, p.logprobs) == (
        1, 128, 0.2, 0.95, 0, None, (), None, None
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=0), "n must be"),
        (dict(n=2.0), "n must be"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.01), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(seed="x"), "seed"),
        (dict(logprobs=-1), "logprobs"),
        (dict(stop=["ok", ""]), "stop strings"),
        (dict(truncate="mbpp"), "unknown truncation preset"),
    ],
)
def test_bad_params_raise_one_clear_error(kwargs, message):
    with pytest.raises(GenerationError, match=message):
        SamplingParams(**kwargs)


def test_params_normalisation():
    p = SamplingParams(stop="\n\n", truncate="none")
    assert p.stop == ("\n\n",) and p.truncate is None and p.stop_strings == ("\n\n",)
    h = dataclasses.replace(p, truncate="humaneval", stop=["\ndef"])
    assert h.stop_strings == ("\ndef", "\nclass", "\n#", "\nif", "\nprint")
    assert SamplingParams(temperature=0).greedy and not p.greedy


def logits_fixture(vocab=40, seed=0):
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 2


def draw(logits, params, n=DRAWS, seed=0):
    uniforms = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    tokens = TokenSampler(params)(logits.expand(n, -1), uniforms)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / n


def assert_frequencies(freq, expected):
    """Empirical frequencies within 5 binomial standard deviations (and zero where expected is zero)."""
    sigma = (expected * (1 - expected) / DRAWS).sqrt()
    assert torch.all((freq - expected).abs() <= 5 * sigma + 1e-12), (freq - expected).abs().max()
    assert torch.all(freq[expected == 0] == 0)


def nucleus(probs, top_p):
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]
    return order[before < top_p]


@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p):
    logits = logits_fixture()
    probs = (logits / 0.7).softmax(-1).double()
    kept = nucleus(probs, top_p)
    assert probs[kept].sum() >= top_p and probs[kept[:-1]].sum() < top_p
    expected = torch.zeros_like(probs)
    expected[kept] = probs[kept] / probs[kept].sum()
    assert_frequencies(draw(logits, SamplingParams(temperature=0.7, top_p=top_p)), expected)


def test_top_k_support_and_renormalisation():
    logits = logits_fixture(seed=1)
    best = logits.topk(5).indices
    expected = torch.zeros(logits.shape[0], dtype=torch.float64)
    expected[best] = logits[best].double().softmax(-1)
    assert_frequencies(draw(logits, SamplingParams(temperature=1.0, top_p=1.0, top_k=5)), expected)


def test_top_k_then_top_p_like_the_reference_warpers():
    logits = logits_fixture(seed=2)
    within_k = torch.full_like(logits, float("-inf"))
    best = logits.topk(10).indices
    within_k[best] = logits[best]
    probs = within_k.double().softmax(-1)  # top-p sees probabilities renormalised over the top-k set
    kept = nucleus(probs, 0.6)
    expected = torch.zeros_like(probs)
    expected[kept] = probs[kept] / probs[kept].sum()
    assert_frequencies(draw(logits, SamplingParams(temperature=1.0, top_p=0.6, top_k=10)), expected)


def test_plain_temperature_sampling():
    logits = logits_fixture(seed=3)
    expected = (logits.double() / 1.5).softmax(-1)
    assert_frequencies(draw(logits, SamplingParams(temperature=1.5, top_p=1.0)), expected)


def test_greedy_is_argmax():
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(4))
    assert torch.equal(sample_tokens(logits, SamplingParams(temperature=0), None), logits.argmax(-1))


def test_wide_nucleus_beyond_the_first_candidates():
    """A flat distribution needs thousands of tokens for p = 0.95 (the search widens past its first guess)."""
    logits = torch.randn(8000, generator=torch.Generator().manual_seed(5)) * 0.5
    probs = logits.double().softmax(-1)
    kept = nucleus(probs, 0.95)
    assert len(kept) > 2000
    params = SamplingParams(temperature=1.0, top_p=0.95)
    ends = torch.tensor([0.0, 1 - 1e-12], dtype=torch.float64)
    first, last = TokenSampler(params)(logits.expand(2, -1), ends).tolist()
    assert first == kept[0] and last == kept[-1]
    freq = draw(logits, params, n=300)
    assert set(freq.nonzero().squeeze(-1).tolist()) <= set(kept.tolist())


def test_rows_are_independent_of_their_batch():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(5, 3000, generator=gen) * torch.tensor([0.1, 1.0, 3.0, 10.0, 0.5])[:, None]
    uniforms = torch.rand(5, generator=gen, dtype=torch.float64)
    params = SamplingParams(temperature=0.8, top_p=0.9)
    together = TokenSampler(params)(logits, uniforms)
    alone = torch.cat([TokenSampler(params)(logits[i : i + 1], uniforms[i : i + 1]) for i in range(5)])
    assert torch.equal(together, alone)
    # a sampler that searched wide nuclei before (its remembered width) chooses the same tokens
    used = TokenSampler(params)
    used(torch.zeros(5, 3000), uniforms)  # flat: the widest nucleus
    assert torch.equal(used(logits, uniforms), together)


def test_sequence_uniforms_are_seeded_per_key_and_sample():
    a = sequence_uniforms(7, "0", 0, 16)
    assert torch.equal(a, sequence_uniforms(7, "0", 0, 16))
    others = [sequence_uniforms(7, "0", 1, 16), sequence_uniforms(8, "0", 0, 16), sequence_uniforms(7, "1", 0, 16)]
    assert not any(torch.equal(a, other) for other in others)
    assert torch.equal(sequence_uniforms(7, "0", 0, 32)[:16], a)  # longer budgets extend the same stream
    assert a.dtype == torch.float64 and bool(((a >= 0) & (a < 1)).all())
    # the fields are separated: ("1", 23) and ("12", 3) are different streams
    assert sequence_seed(0, "1", 23) != sequence_seed(0, "12", 3)


def test_sequence_seeds_are_stable_across_versions():
    """Resumed runs redraw the samples they lost: the seed of a stream must never change silently."""
    assert sequence_seed(7, "0", 0) == 8705751253558669241
    assert sequence_seed(0, "HumanEval/0|0.2", 3) == 1841569929961161185


def test_token_logprobs():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(8))
    chosen = torch.tensor([4, 10, 49])
    out = token_logprobs(logits, chosen, 3)
    logp = logits.log_softmax(-1)
    for row, (lp, top) in enumerate(out):
        assert lp == pytest.approx(logp[row, chosen[row]].item())
        assert [t for t, _ in top] == logp[row].topk(3).indices.tolist()
        assert [v for _, v in top] == pytest.approx(logp[row].topk(3).values.tolist())
    assert all(top == [] for _, top in token_logprobs(logits, chosen, 0))
