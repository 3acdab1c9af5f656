"""The generation engine: prefill, incremental decode with a KV cache, n samples per prompt.

Every prompt is prefilled once, alone (no padding, so its cache and first-token logits never
depend on the rest of the batch); its cache then serves every row continuing it — n samples share
ONE prefill. All rows of a call stream through one running batch (the decode core shared with the
server, `running_batch.py`), shortest prompts first: rows decode together, one token per step;
rows that finish leave when that pays for moving the others (`worth_compacting`) or frees room for
waiting rows, which then join between two steps, as many as the row cap (`max_batch_size`) and
the cache budget (`max_cache_bytes`) allow.
"""

from __future__ import annotations

import dataclasses
from collections import deque
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
class Work:
    """One prompt to continue (token ids), the sample indices of its rows, which with the call's seed
    and `key` fix each row's random stream, and its token budget (None: the call's)."""

    ids: Sequence[int]
    key: str
    samples: Sequence[int]
    max_new_tokens: int | None = None


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

    At most `max_batch_size` rows decode together, with caches of at most `max_cache_bytes`.
    `share_prefix`: the n samples of a prompt attend to one copy of its cache (`SharedPrefixCache`)
    instead of a copy per row. It saves memory traffic where decoding is bandwidth-bound (CPU);
    on a GPU, where small decode steps are bound by kernel launches, its extra kernels cost more,
    so the default (None) shares on CPU only, and there only for prompts of `SHARE_MIN_PROMPT`
    tokens on average (shorter ones decode faster as copies, through the native attention kernel).
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
        self.share_min_prompt = SHARE_MIN_PROMPT if share_prefix is None else 0
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
        """Events of every sequence of every prompt as they happen.
        `keys` and `first_sample` choose the random streams, as in `generate`."""
        streams = row_streams(len(prompt_ids), params.n, keys, first_sample)
        work = [Work(ids, key, range(first, first + params.n)) for ids, (key, first) in zip(prompt_ids, streams)]
        yield from self.stream_work(work, params)

    @torch.inference_mode()
    def stream_work(self, work: Sequence[Work], params: SamplingParams) -> Iterator[StreamEvent]:
        """Events of the rows of every piece of `work` as they happen: all of them stream through one
        running batch, shortest prompts first; rows that finish leave and waiting rows join.

        An event's `prompt_index` is the index in `work`, its `index` the position in that work's
        `samples`; `params.n` is not used (each work names its samples) and `params.max_new_tokens`
        is the budget of work that sets none.
        """
        budgets = [params.max_new_tokens if w.max_new_tokens is None else w.max_new_tokens for w in work]
        prompts = [self._check_prompt(i, w.ids, budget, params) for i, (w, budget) in enumerate(zip(work, budgets))]
        rows = [(w.key, sample) for w in work for sample in w.samples]
        if len(set(rows)) != len(rows):
            raise GenerationError("two rows would share a random stream (the same key and sample index): "
                                  "give each prompt its own key or disjoint sample indices")
        order = sorted(range(len(work)), key=lambda p: len(prompts[p]))
        queue = deque((p, j) for p in order for j in range(len(work[p].samples)))
        if not work:
            return
        rows_params = [params if b == params.max_new_tokens else dataclasses.replace(params, max_new_tokens=b)
                       for b in budgets]
        decode = _Decode(self, prompts, rows_params, work, resolve_seed(params.seed))
        yield from decode.run(queue)

    # ---- internals -------------------------------------------------------------------------------
    def _check_prompt(self, i: int, ids: Sequence[int], budget: int, params: SamplingParams) -> list[int]:
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
        room = context - budget
        if room < 1:
            raise GenerationError(f"max_new_tokens={budget} leaves no room for a prompt "
                                  f"in the model's context of {context} tokens")
        if len(ids) > room:
            if not params.truncate_prompt:
                raise GenerationError(
                    f"prompt {i} has {len(ids)} tokens; with max_new_tokens={budget} it needs "
                    f"{len(ids) + budget} positions, more than the model's context of {context}. "
                    "Shorten the prompt, lower max_new_tokens or allow left truncation (truncate_prompt)."
                )
            ids = ids[-room:]
        return ids

    def _prefill(self, ids: list[int]) -> Prefilled:
        return prefill(self.model, [ids])


#: Mean prompt length (tokens) from which the default CPU engine keeps a prompt continued by several
#: rows once for all of them (below it, a copy per row decodes faster: benchmarks/bench_share_prefix.py).
SHARE_MIN_PROMPT = 192

#: Rows that finished make room for waiting ones once this share of the row cap is free: every join
#: copies the running rows' caches once, so joins are gathered rather than made row by row.
JOIN_FRACTION = 3


class _Decode:
    """One `stream_work` call: its waiting rows (prompt, position in its samples) join one running
    batch between decode steps, within the generator's row cap and cache budget."""

    def __init__(
        self, generator: Generator, prompts: list[list[int]], params: list[SamplingParams], work: Sequence[Work],
        seed: int,
    ) -> None:
        self.generator, self.prompts, self.params, self.work, self.seed = generator, prompts, params, work, seed
        self.base = params[0]  # the call's sampler settings (the params differ in their budgets only)
        self.width = max(p.max_new_tokens for p in params)  # uniform draws kept per row
        repeated = [len(ids) for ids, w in zip(prompts, work) if len(w.samples) > 1]
        share = bool(repeated) and sum(repeated) >= generator.share_min_prompt * len(repeated)
        self.batch = RunningBatch(generator.model, share_prefix=share and generator.share_prefix)
        self.prefixes: dict[int, Prefilled] = {}  # prompts whose rows have not all joined yet
        self.join_at = max(1, generator.max_batch_size // JOIN_FRACTION)

    def run(self, queue: deque[tuple[int, int]]) -> Iterator[StreamEvent]:
        device = self.generator.model.device
        vocab = self.generator.vocab_limit
        logits: torch.Tensor | None = None  # [B, V]: the next token's logits of every row
        greedy = self.base.greedy
        uniforms = None if greedy else torch.empty(0, self.width, dtype=torch.float64, device=device)
        taken = torch.zeros(0, dtype=torch.long, device=device)  # tokens each row has drawn
        sampler = TokenSampler(self.base)
        while queue or self.batch.rows:
            joined = None
            if queue and (not self.batch.rows or self.batch_free() >= min(self.join_at, len(queue))):
                joined = self.join(queue)
            if joined is not None:
                new_logits, new_uniforms = joined
                logits = new_logits if logits is None else torch.cat((logits, new_logits))
                uniforms = None if greedy else torch.cat((uniforms, new_uniforms))
                taken = torch.cat((taken, torch.zeros(len(new_logits), dtype=torch.long, device=device)))
            active: list[SequenceState] = self.batch.rows
            scores = logits[:, :vocab]
            chosen_from = penalize(scores, [seq.token_ids for seq in active], self.base)
            draws = None if greedy else uniforms.gather(1, taken.clamp(max=self.width - 1)[:, None])[:, 0]
            tokens = sampler(chosen_from, draws)
            taken += 1
            logprobs = None if self.base.logprobs is None else token_logprobs(scores, tokens, self.base.logprobs)
            for row, (seq, token) in enumerate(zip(active, tokens.tolist())):
                if seq.completion is None:
                    event = seq.advance(token, None if logprobs is None else logprobs[row])
                    if event is not None:
                        yield event
            running = [row for row, seq in enumerate(active) if seq.completion is None]
            if not running and not queue:
                return
            if self.should_leave(len(active), running, queue):
                self.batch.keep(running)
                index = torch.tensor(running, dtype=torch.long, device=device)
                tokens, taken = tokens[index], taken[index]
                uniforms = None if greedy else uniforms[index]
            logits = self.batch.step(tokens) if self.batch.rows else None

    def batch_free(self) -> int:
        """Row slots free for waiting rows once the finished ones leave."""
        return self.generator.max_batch_size - sum(seq.completion is None for seq in self.batch.rows)

    def should_leave(self, rows: int, running: list[int], queue: deque) -> bool:
        """Whether the finished rows leave now: to make room for waiting rows, or when carrying them
        would cost more than moving the others (`worth_compacting`)."""
        finished = rows - len(running)
        if not finished:
            return False
        if not running or (queue and self.batch_free() >= min(self.join_at, len(queue))):
            return True
        steps_left = max(self.batch.rows[r].params.max_new_tokens - len(self.batch.rows[r].token_ids) for r in running)
        return worth_compacting(finished, rows, steps_left)

    def join(self, queue: deque[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Waiting rows join while the row cap and the cache budget allow (at least one row into an
        empty batch): their prompts are prefilled once each; returns their first logits and their
        uniform draws, or None when none fits."""
        generator, batch = self.generator, self.batch
        live_room = max((seq.params.max_new_tokens - len(seq.token_ids) for seq in batch.rows), default=0)
        joined: list[tuple[int, int]] = []
        groups: list[tuple[int, int]] = []  # (prompt, rows joining now) in joining order
        while queue and len(batch) + len(joined) < generator.max_batch_size:
            p = queue[0][0]
            trial = groups[:-1] + [(p, groups[-1][1] + 1)] if groups and groups[-1][0] == p else groups + [(p, 1)]
            room = max(live_room, *(self.params[q].max_new_tokens for q, _ in trial))
            tokens = batch.tokens_after([(len(self.prompts[q]), n) for q, n in trial], room)
            if (batch.rows or joined) and tokens * generator._cache_bytes_per_token > generator.max_cache_bytes:
                break
            groups = trial
            joined.append(queue.popleft())
        if not joined:
            return None
        room = max(live_room, *(self.params[p].max_new_tokens for p, _ in groups))
        for p, _ in groups:
            if p not in self.prefixes:
                self.prefixes[p] = generator._prefill(self.prompts[p])
        prefixes = [self.prefixes[p] for p, _ in groups]
        for p, _ in groups:  # a prompt's rows wait together: its prefill is needed no longer
            if not queue or queue[0][0] != p:
                del self.prefixes[p]
        batch.add([(prefix.cache, prefix.mask, [n]) for prefix, (_, n) in zip(prefixes, groups)],
                  [SequenceState(p, j, generator, self.params[p]) for p, j in joined], room)
        logits = torch.cat([prefix.next_logits.expand(n, -1) for prefix, (_, n) in zip(prefixes, groups)])
        if self.base.greedy:
            return logits, None
        draws = torch.zeros(len(joined), self.width, dtype=torch.float64)
        for row, (p, j) in enumerate(joined):
            work = self.work[p]
            draws[row, : self.params[p].max_new_tokens] = sequence_uniforms(
                self.seed, work.key, work.samples[j], self.params[p].max_new_tokens)
        return logits, draws.to(logits.device)
