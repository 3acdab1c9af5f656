"""Sampling parameters and the next-token choice: greedy, temperature, top-k, top-p (nucleus).

Randomness is per sequence: every sequence owns a ``torch.Generator`` seeded from a stable hash
of (seed, row key, sample index) that draws one uniform number per step in advance, and the token
is found by inverting the cumulative distribution of the filtered probabilities. The row key names
the prompt (by default its index in the call; callers pass stable keys such as a task id), so
identical prompts of one call draw different samples, while a sequence's draws never depend on
which other sequences share its batch or how large that batch is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Sequence

import torch

from opencodegen.errors import GenerationError
from opencodegen.generation.stopping import preset_stops

# Top-p needs the tokens in decreasing order only until their mass reaches p; a full sort of a
# 50k vocabulary is slow on CPU, so look at the best _FIRST_K first and widen only when needed.
_FIRST_K = 256
# exp() of anything below this underflows into float32's denormals, which are slow on x86; a
# clamp there moves probabilities under 1e-38 of the best token's, far below what any sampler
# can tell apart.
_EXP_FLOOR = -87.0


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample. Defaults: the temperature, top-p and budget of CodeGen's demo sampler
    (jaxformer/hf/sample.py), but without the top-k 50 that its transformers 4.16.2 added unasked
    (the `codegen-release` evaluation protocol sets it; see docs/evaluation.md).

    temperature 0 means greedy. `stop`: strings that end a completion (not included in the text).
    `truncate`: "codegen" (CodeGen's truncation rules), "humaneval" (the HumanEval stop list) or
    None / "none". `logprobs`: None, or k >= 0 to return each chosen token's log-probability under
    the model (before temperature and filtering) with the k most likely alternatives.
    `truncate_prompt`: drop the oldest prompt tokens when prompt + max_new_tokens exceeds the
    context, instead of raising GenerationError. `ignore_eos`: keep generating after EOS.
    `presence_penalty` / `frequency_penalty` (OpenAI's, in [-2, 2], 0 = off): subtracted from the
    logit of every token the completion already holds, once / once per occurrence (the prompt's
    tokens do not count), before greedy or sampled choice; logprobs stay the model's.
    """

    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    truncate: str | None = None
    logprobs: int | None = None
    truncate_prompt: bool = False
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise GenerationError(message)

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        check(is_int(self.n) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}")
        check(is_int(self.max_new_tokens) and self.max_new_tokens >= 1,
              f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        check(isinstance(self.temperature, (int, float)) and self.temperature >= 0,
              f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        check(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1,
              f"top_p must be in (0, 1], got {self.top_p!r}")
        check(is_int(self.top_k) and self.top_k >= 0, f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        check(self.seed is None or is_int(self.seed), f"seed must be an integer or None, got {self.seed!r}")
        check(self.logprobs is None or (is_int(self.logprobs) and self.logprobs >= 0),
              f"logprobs must be None or an integer >= 0, got {self.logprobs!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and -2 <= value <= 2, f"{name} must be in [-2, 2], got {value!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        check(all(isinstance(s, str) and s for s in stop), f"stop strings must be non-empty strings, got {stop!r}")
        object.__setattr__(self, "stop", stop)
        if self.truncate == "none":
            object.__setattr__(self, "truncate", None)
        preset_stops(self.truncate)  # raises on an unknown preset

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The explicit stop strings plus those of the truncation preset."""
        return tuple(dict.fromkeys(self.stop + preset_stops(self.truncate)))


def resolve_seed(seed: int | None) -> int:
    """The request's seed, or a fresh random one."""
    return secrets.randbits(63) if seed is None else seed


def sequence_seed(seed: int, key: str, sample: int) -> int:
    """The generator seed of sample `sample` of the row keyed `key`: a stable hash of all three
    (the same on every machine and Python version, unlike ``hash``)."""
    text = "\x1f".join((str(seed), key, str(sample)))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def sequence_uniforms(seed: int, key: str, sample: int, steps: int) -> torch.Tensor:
    """The uniform draws in [0, 1) of sample `sample` of the row keyed `key` under `seed` (float64, [steps])."""
    generator = torch.Generator().manual_seed(sequence_seed(seed, key, sample))
    return torch.rand(steps, generator=generator, dtype=torch.float64)


def row_streams(
    count: int, n: int, keys: Sequence[str] | None, first_sample: int | Sequence[int]
) -> list[tuple[str, int]]:
    """(row key, first sample index) of each of `count` prompts with `n` samples each.

    `keys` default to the prompts' indices in the call; `first_sample` is one index for all prompts
    or one per prompt.
    """
    keys = [str(i) for i in range(count)] if keys is None else list(keys)
    if len(keys) != count or not all(isinstance(k, str) for k in keys):
        raise GenerationError(f"keys must be one string per prompt ({count} prompts), got {keys!r:.200}")
    firsts = [first_sample] * count if isinstance(first_sample, int) else list(first_sample)
    if len(firsts) != count or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in firsts):
        raise GenerationError(f"first_sample must be an integer >= 0 or one per prompt, got {first_sample!r:.200}")
    return list(zip(keys, firsts))


class TokenSampler:
    """Chooses the next token of every row of a batch sampled with one `SamplingParams`.

    Greedy takes the arg-max; otherwise `uniforms` [B] (float64 in [0, 1), one per row) pick the
    token by inverting the cumulative distribution of the filtered probabilities. The top-p search
    starts from the width the previous call needed (nucleus sizes change slowly from one step to
    the next); that only saves time, the tokens kept are the same.
    """

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._width = _FIRST_K

    def __call__(self, logits: torch.Tensor, uniforms: torch.Tensor | None) -> torch.Tensor:
        """Next token of each row of `logits` [B, V] (already restricted to the usable vocabulary)."""
        logits = logits.float().contiguous()  # rows in memory order: reductions and top-k are much faster
        if self.params.greedy:
            return logits.argmax(-1)
        probs, ids = self._nucleus(logits / self.params.temperature)
        cumulative = probs.double().cumsum(-1)
        target = uniforms.to(cumulative.dtype)[:, None] * cumulative[:, -1:]
        position = (cumulative <= target).sum(-1, keepdim=True).clamp_(max=ids.shape[-1] - 1)
        return ids.gather(-1, position).squeeze(-1)

    def _nucleus(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate (probabilities, token ids) of each row in decreasing order, zero past the cut.

        `scores` [B, V] are logits / temperature. Top-k keeps every token scoring at least the k-th
        best (ties with it stay, as in transformers' TopKLogitsWarper); top-p then keeps the smallest
        prefix whose mass reaches p (a token stays when the mass before it is < p), with the
        probabilities renormalised over the top-k set: temperature, top-k, top-p, the order of
        transformers 4.16.2's warpers.
        """
        top_k, top_p = self.params.top_k, self.params.top_p
        vocab = scores.shape[-1]
        k = vocab
        if top_k and top_k < vocab:
            kth = scores.topk(top_k).values[:, -1:]
            k = int((scores >= kth).sum(-1).max().item())
            if k > top_k:  # some row has ties with its k-th score: they stay, what is below goes
                scores = scores.masked_fill(scores < kth, float("-inf"))
        if k == vocab and top_p >= 1:  # plain temperature sampling: any fixed order will do
            probs = (scores - _logsumexp(scores)).clamp_(min=_EXP_FLOOR).exp_()
            return probs, torch.arange(vocab, device=scores.device).expand_as(scores)
        log_norm = _logsumexp(scores if k == vocab else scores.topk(k).values)
        width = k if top_p >= 1 else min(k, self._width)
        while True:
            values, ids = scores.topk(width) if width < vocab else scores.sort(-1, descending=True)
            probs = (values - log_norm).exp()
            if top_p >= 1:
                return probs, ids
            mass = probs.cumsum(-1)
            short = top_p - mass[:, -1]
            if width == k or not bool((short > 0).any()):
                keep = mass - probs < top_p
                self._width = max(_FIRST_K, int(1.25 * keep.sum(-1).max().item()) + 1)
                return probs * keep, ids
            # The tokens left are no likelier than the last one seen: at least short / p_last more are needed.
            needed = (short / probs[:, -1].clamp(min=1e-30)).max().item()
            width = int(min(k, max(2 * width, width + 2 * needed)))


def _logsumexp(scores: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(scores))) of each row, [B, 1], without the denormal slow path of torch's kernel."""
    best = scores.amax(-1, keepdim=True)
    return best + (scores - best).clamp_(min=_EXP_FLOOR).exp_().sum(-1, keepdim=True).log_()


def penalize(logits: torch.Tensor, generated: Sequence[Sequence[int]], params: SamplingParams) -> torch.Tensor:
    """`logits` [B, V] minus the presence and frequency penalties of each row's `generated` tokens."""
    if not params.penalized:
        return logits
    counts = torch.zeros_like(logits, dtype=torch.float32)
    for row, ids in enumerate(generated):
        if ids:
            index = torch.tensor(ids, device=logits.device)
            counts[row].index_add_(0, index, torch.ones(len(ids), device=logits.device))
    penalty = params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    return logits.float() - penalty


def sample_tokens(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Next token of each row of `logits` [B, V] with a one-off `TokenSampler` (a decode loop keeps
    one sampler instead, which reuses its top-p search width from step to step)."""
    return TokenSampler(params)(logits, uniforms)


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """Per row: log-probability of the chosen token and the k most likely (id, logprob) pairs."""
    logp = torch.log_softmax(logits.float(), -1)
    chosen_lp = logp.gather(-1, chosen[:, None]).squeeze(-1).tolist()
    if k == 0:
        return [(lp, []) for lp in chosen_lp]
    top_lp, top_ids = logp.topk(min(k, logp.shape[-1]))
    return [
        (lp, list(zip(ids, lps)))
        for lp, ids, lps in zip(chosen_lp, top_ids.tolist(), top_lp.tolist())
    ]
