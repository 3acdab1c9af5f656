"""The generation engine: prefill, incremental decode with a KV cache, n samples per prompt.

Every prompt is prefilled once, alone (no padding, so its cache and first-token logits never
depend on the rest of the batch); its cache is then copied into the rows of a left-padded batch
cache, once per sample — n samples share ONE prefill. Decoding runs all rows together, one token
per step in the decode core shared with the server (`running_batch.py`); rows that finish leave
the batch when that pays for the copy (`worth_compacting`).
Large requests are cut into batches that fit `max_cache_bytes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from opencodegen.errors import GenerationError
from opencodegen.generation.running_batch import Prefilled, RunningBatch, prefill, worth_compacting
from opencodegen.generation.sampling import (
    SamplingParams,
    TokenSampler,
    penalize,
    resolve_seed,
    row_streams,
    sequence_uniforms,
    token_logprobs,
)
from opencodegen.generation.stopping import StopState
from opencodegen.kernels import decode_attention, small_batch_linear
from opencodegen.model import CodeGenForCausalLM
from opencodegen.tokenizer import IncrementalDecoder

if TYPE_CHECKING:
    from opencodegen.tokenizer import CodeGenTokenizer


@dataclasses.dataclass
class TokenLogprob:
    """Log-probability of a generated token and the most likely alternatives (id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclasses.dataclass
class Completion:
    """One generated sequence.

    `text` is already cut by stop strings / truncation; `token_ids` are all tokens generated
    (EOS excluded), so the text may end inside the last one. `finish_reason` is "stop" (EOS, a
    stop string or truncation ended it) or "length" (the token budget ran out).
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None


@dataclasses.dataclass
class StreamEvent:
    """New final text of sample `index` of prompt `prompt_index`; `completion` is set on its last event."""

    prompt_index: int
    index: int
    delta: str
    completion: Completion | None = None


@dataclasses.dataclass(frozen=True)
class _Streams:
    """Where the random draws of one call come from: its seed and each prompt's (key, first sample index)."""

    seed: int
    rows: list[tuple[str, int]]

    def uniforms(self, prompt: int, sample: int, steps: int) -> torch.Tensor:
        key, first = self.rows[prompt]
        return sequence_uniforms(self.seed, key, first + sample, steps)


class SequenceState:
    """Book-keeping of one generated row: tokens, log-probs, decoded text and its stop state."""

    def __init__(self, prompt_index: int, index: int, generator: Generator, params: SamplingParams) -> None:
        self.prompt_index, self.index = prompt_index, index
        self.params = params
        self.eos = None if params.ignore_eos else generator.eos_token_id
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        tokenizer = generator.tokenizer
        self.decoder = IncrementalDecoder(tokenizer) if tokenizer is not None else None
        self.stop = StopState(params.stop_strings, codegen=params.truncate == "codegen")
        self.completion: Completion | None = None

    def advance(self, token: int, logprob: tuple[float, list[tuple[int, float]]] | None) -> StreamEvent | None:
        """Take the sampled token; return the event it causes (new text and/or the end)."""
        if token == self.eos:
            return self._finish("stop")
        self.token_ids.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(TokenLogprob(token, *logprob))
        if self.decoder is not None and self.stop.feed(self.decoder.push(token)):
            return self._finish("stop")
        if len(self.token_ids) == self.params.max_new_tokens:
            return self._finish("length")
        delta = self.stop.take_delta()
        return StreamEvent(self.prompt_index, self.index, delta) if delta else None

    def _finish(self, reason: str) -> StreamEvent:
        if self.decoder is not None:
            self.stop.feed(self.decoder.flush())
        self.stop.finish()
        if self.stop.cut:
            reason = "stop"
        self.completion = Completion(self.stop.final_text, self.token_ids, reason, self.logprobs)
        return StreamEvent(self.prompt_index, self.index, self.stop.take_delta(), self.completion)


class Generator:
    """Generates completions with a CodeGen model; one engine for the CLI, evaluation and serving.

    `tokenizer` may be None for the token-level API (`generate_ids`); then the whole embedding
    matrix is usable and text features (stop strings, truncation, text) are unavailable.
    Otherwise ids from len(tokenizer) up (never-trained embedding rows) are never sampled.

    `share_prefix`: the n samples of a prompt attend to one copy of its cache (`SharedPrefixCache`)
    instead of a copy per row. It saves memory traffic where decoding is bandwidth-bound (CPU);
    on a GPU, where small decode steps are bound by kernel launches, its extra kernels cost more,
    so the default (None) shares on CPU only.
    """

    def __init__(
        self,
        model: CodeGenForCausalLM,
        tokenizer: CodeGenTokenizer | None = None,
        *,
        max_batch_size: int = 64,
        max_cache_bytes: int = 2 << 30,
        share_prefix: bool | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        config = model.config
        self.vocab_limit = min(len(tokenizer), config.vocab_size) if tokenizer is not None else config.vocab_size
        self.eos_token_id = tokenizer.eos_token_id if tokenizer is not None else config.eos_token_id
        self.max_batch_size = max_batch_size
        self.max_cache_bytes = max_cache_bytes
        self.share_prefix = model.device.type == "cpu" if share_prefix is None else share_prefix
        if model.device.type == "cpu" and model.dtype in small_batch_linear.ROWS:
            small_batch_linear.status()  # build or load the kernels now, not inside the first request
        if model.device.type == "cpu" and model.dtype == torch.float32:
            decode_attention.LIBRARY.status()
        element = torch.empty((), dtype=model.dtype).element_size()
        self._cache_bytes_per_token = 2 * config.n_layer * config.n_embd * element

    # ---- public API ------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        progress: Callable[[int], None] | None = None,
        *,
        keys: Sequence[str] | None = None,
        first_sample: int | Sequence[int] = 0,
    ) -> list[list[Completion]]:
        """`params.n` completions of every prompt, in prompt order.

        `progress`, if given, is called with the number of sequences that just finished
        (e.g. a tqdm bar's `update`). Completion j of prompt i draws from the stream of
        (params.seed, keys[i], first_sample + j) (`first_sample`: one index, or one per prompt);
        `keys` default to the prompts' indices in this call. Callers that split one piece of work
        over several calls pass stable keys (a task id) and sample indices, so that a sample is the
        same however the work is split.
        """
        return self.generate_ids(self.encode(prompts), params, progress, keys=keys, first_sample=first_sample)

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        progress: Callable[[int], None] | None = None,
        *,
        keys: Sequence[str] | None = None,
        first_sample: int | Sequence[int] = 0,
    ) -> list[list[Completion]]:
        """As `generate`, for prompts given as token ids."""
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompt_ids]
        for event in self.stream_events(prompt_ids, params, keys=keys, first_sample=first_sample):
            if event.completion is not None:
                results[event.prompt_index][event.index] = event.completion
                if progress is not None:
                    progress(1)
        return results  # type: ignore[return-value]

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str] | Iterator[tuple[int, str]]:
        """Text deltas of one prompt as they become final: str for n = 1, (sample index, delta) for n > 1."""
        for event in self.stream_events(self.encode([prompt]), params):
            if event.delta:
                yield event.delta if params.n == 1 else (event.index, event.delta)

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        if self.tokenizer is None:
            raise GenerationError("text prompts need a tokenizer; use generate_ids for token ids")
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise GenerationError("prompts must be a list of strings")
        return self.tokenizer.encode_batch(list(prompts))

    @torch.inference_mode()
    def stream_events(
        self,
        prompt_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        keys: Sequence[str] | None = None,
        first_sample: int | Sequence[int] = 0,
    ) -> Iterator[StreamEvent]:
        """Events of every sequence of every prompt as they happen (prompts of similar length are batched).
        `keys` and `first_sample` choose the random streams, as in `generate`."""
        prompts = [self._check_prompt(i, ids, params) for i, ids in enumerate(prompt_ids)]
        streams = _Streams(resolve_seed(params.seed), row_streams(len(prompts), params.n, keys, first_sample))
        order = sorted(range(len(prompts)), key=lambda p: len(prompts[p]))
        jobs = [(p, j) for p in order for j in range(params.n)]
        prefixes: dict[int, Prefilled] = {}
        start = 0
        while start < len(jobs):
            end = self._batch_end(jobs, start, prompts, params)
            batch = jobs[start:end]
            for p in dict.fromkeys(p for p, _ in batch):
                if p not in prefixes:
                    prefixes[p] = self._prefill(prompts[p])
            yield from self._decode(batch, prefixes, params, streams)
            for p, _ in batch:  # a prompt's samples are contiguous: drop prefixes no later batch needs
                if end == len(jobs) or jobs[end][0] != p:
                    prefixes.pop(p, None)
            start = end

    # ---- internals -------------------------------------------------------------------------------
    def _check_prompt(self, i: int, ids: Sequence[int], params: SamplingParams) -> list[int]:
        if self.tokenizer is None and (params.stop_strings or params.truncate):
            raise GenerationError("stop strings and truncation need a tokenizer")
        ids = [int(t) for t in ids]
        if not ids:
            raise GenerationError(
                f"prompt {i} is empty: CodeGen has no BOS token, so generation needs at least one prompt token"
            )
        vocab = self.model.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise GenerationError(f"prompt {i} holds token id {bad[0]}, outside the model's {vocab} embedding rows")
        context = self.model.config.n_positions
        room = context - params.max_new_tokens
        if room < 1:
            raise GenerationError(f"max_new_tokens={params.max_new_tokens} leaves no room for a prompt "
                                  f"in the model's context of {context} tokens")
        if len(ids) > room:
            if not params.truncate_prompt:
                raise GenerationError(
                    f"prompt {i} has {len(ids)} tokens; with max_new_tokens={params.max_new_tokens} it needs "
                    f"{len(ids) + params.max_new_tokens} positions, more than the model's context of {context}. "
                    "Shorten the prompt, lower max_new_tokens or allow left truncation (truncate_prompt)."
                )
            ids = ids[-room:]
        return ids

    def _batch_end(self, jobs: list[tuple[int, int]], start: int, prompts: list[list[int]], params: SamplingParams) -> int:
        """End of the largest batch from `start` within max_batch_size rows and the cache budget."""
        longest, groups, end = 0, 0, start
        while end < len(jobs) and end - start < self.max_batch_size:
            prompt = jobs[end][0]
            new_group = end == start or jobs[end - 1][0] != prompt
            longest_with = max(longest, len(prompts[prompt]))
            rows = end - start + 1
            if params.n > 1 and self.share_prefix:  # each prompt once, each row its own tokens
                tokens = (groups + new_group) * longest_with + rows * params.max_new_tokens
            else:
                tokens = rows * (longest_with + params.max_new_tokens)
            if rows > 1 and tokens * self._cache_bytes_per_token > self.max_cache_bytes:
                break
            longest, groups, end = longest_with, groups + new_group, end + 1
        return end

    def _prefill(self, ids: list[int]) -> Prefilled:
        return prefill(self.model, [ids])

    def _decode(
        self, batch: list[tuple[int, int]], prefixes: dict[int, Prefilled], params: SamplingParams, streams: _Streams
    ) -> Iterator[StreamEvent]:
        max_new = params.max_new_tokens
        groups: list[tuple[Prefilled, int]] = []  # runs of rows continuing one prompt
        for p, _ in batch:
            if groups and groups[-1][0] is prefixes[p]:
                groups[-1] = (prefixes[p], groups[-1][1] + 1)
            else:
                groups.append((prefixes[p], 1))
        running = RunningBatch(self.model, share_prefix=params.n > 1 and self.share_prefix)
        running.add([(prefix.cache, prefix.mask, [n]) for prefix, n in groups],
                    [SequenceState(p, j, self, params) for p, j in batch], max_new)
        logits = torch.cat([prefix.next_logits.expand(n, -1) for prefix, n in groups])
        uniforms = None
        if not params.greedy:
            uniforms = torch.stack([streams.uniforms(p, j, max_new) for p, j in batch]).to(self.model.device)
        sampler = TokenSampler(params)

        for step in range(max_new):
            active: list[SequenceState] = running.rows
            scores = logits[:, : self.vocab_limit]
            chosen_from = penalize(scores, [seq.token_ids for seq in active], params)
            tokens = sampler(chosen_from, None if uniforms is None else uniforms[:, step])
            logprobs = None if params.logprobs is None else token_logprobs(scores, tokens, params.logprobs)
            for row, (seq, token) in enumerate(zip(active, tokens.tolist())):
                if seq.completion is None:
                    event = seq.advance(token, None if logprobs is None else logprobs[row])
                    if event is not None:
                        yield event
            finished = sum(seq.completion is not None for seq in active)
            if finished == len(active):
                return
            if worth_compacting(finished, len(active), max_new - step - 1):
                keep = [row for row, seq in enumerate(active) if seq.completion is None]
                running.keep(keep)
                index = torch.tensor(keep, device=tokens.device)
                tokens = tokens[index]
                uniforms = None if uniforms is None else uniforms[index]
            logits = running.step(tokens)
