"""Continuous batching: one model thread decodes every running sequence together, step by step.

Between two decode steps, waiting requests are prefilled (one prefill per prompt, its KV rows
repeated for the n samples, or on CPU kept once for them: `RunningBatch`'s shared prefixes) and
merged into the running batch, and finished or cancelled sequences leave it. Admission is round-robin between requests: each waiting request in turn
gets one prompt admitted, so a small request is not starved by one with many prompts that
arrived first. Sampling, stop strings and logprobs are the generation engine's
(`opencodegen.generation.sampling` / `.stopping`); each sequence draws its random numbers from
its own (seed, prompt index, sample index) stream, so its output does not depend on its batch
neighbours, and identical prompts of one request draw different samples.

The asyncio side talks to the thread through :meth:`Scheduler.submit` (which returns a
:class:`Job` whose events arrive on an asyncio queue) and :meth:`Job.cancel`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from opencodegen.generation.engine import Generator, StreamEvent
from opencodegen.generation.engine import SequenceState as EngineSequence
from opencodegen.generation.running_batch import RunningBatch, prefill
from opencodegen.generation.sampling import (
    SamplingParams,
    penalize,
    resolve_seed,
    sample_tokens,
    sequence_uniforms,
    token_logprobs,
)
from opencodegen.model import CodeGenForCausalLM
from opencodegen.serving.metrics import Metrics
from opencodegen.tokenizer import CodeGenTokenizer, IncrementalDecoder

log = logging.getLogger(__name__)

#: Padded prompt tokens prefilled in one step at most (one group is always admitted).
PREFILL_TOKEN_BUDGET = 8192


class QueueFull(Exception):
    """The waiting queue holds `max_queue` requests already."""


class ShuttingDown(Exception):
    """The scheduler is stopped or stopping."""


# ----------------------------------------------------------------------------------- events


@dataclass
class TokenInfo:
    """One token of a prompt or completion, for logprobs; `offset` is its text's start (chars)."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    offset: int = 0


@dataclass
class PromptLogprobs:
    """The prompt's tokens with their log-probabilities (echo with logprobs)."""

    prompt_index: int
    tokens: list[TokenInfo]


@dataclass
class Delta:
    """Newly final text of a streamed choice and the tokens that start in it."""

    index: int
    text: str
    tokens: list[TokenInfo]


@dataclass
class Finished:
    """A choice is complete: the text not sent before (all of it unless streamed), and why it ended."""

    index: int
    text: str
    tokens: list[TokenInfo]
    finish_reason: str
    completion_tokens: int


@dataclass
class Failed:
    message: str


# ----------------------------------------------------------------------------------- jobs


class Job:
    """One completion request inside the scheduler: its prompts, params and event queue."""

    def __init__(
        self,
        scheduler: Scheduler,
        prompts: list[list[int]],
        params: SamplingParams,
        *,
        stream: bool,
        prompt_logprobs: bool,
        prompt_only: bool,
        loop: asyncio.AbstractEventLoop,
    ):
        self.prompts, self.params = prompts, params
        self.stream, self.prompt_logprobs, self.prompt_only = stream, prompt_logprobs, prompt_only
        self.seed = resolve_seed(params.seed)
        self.arrival = time.monotonic()
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False
        self.unadmitted = len(prompts)  # prompt groups still waiting
        self.unfinished = len(prompts) * params.n  # choices not finished yet
        self.first_token_seen = False
        self.next_prompt = 0  # the prompt group admitted next
        self._scheduler = scheduler
        self._loop = loop

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.params.n

    def cancel(self) -> None:
        """Stop working on this job (client gone): leaves the queue, its sequences leave the batch."""
        self._scheduler.cancel(self)

    async def next_event(self) -> Any:
        return await self.events.get()


@dataclass
class _Group:
    job: Job
    prompt_index: int

    @property
    def prompt(self) -> list[int]:
        return self.job.prompts[self.prompt_index]

    @property
    def width(self) -> int:
        return len(self.prompt)


class _Row:
    """One choice in the running batch: the engine's sequence state (tokens, text, stop) plus
    the character offset of each token and how much of it was already sent."""

    def __init__(self, job: Job, prompt_index: int, sample: int, generator: Generator):
        params = job.params
        self.job = job
        self.index = prompt_index * params.n + sample
        self.seq = EngineSequence(prompt_index, sample, generator, params)
        self.uniforms = (None if params.greedy
                         else sequence_uniforms(job.seed, str(prompt_index), sample, params.max_new_tokens))
        self.offsets: list[int] = []
        self.sent_chars = self.sent_tokens = 0

    @property
    def room(self) -> int:
        """Tokens this row may still feed to the model."""
        return self.job.params.max_new_tokens - len(self.seq.token_ids)

    @property
    def uniform(self) -> torch.Tensor:
        return self.uniforms[len(self.seq.token_ids)]

    def accept(self, token: int, logprob: tuple[float, list[tuple[int, float]]] | None) -> StreamEvent | None:
        """Take the sampled token; the event carries newly final text and, at the end, the completion."""
        offset = len(self.seq.stop.text)
        event = self.seq.advance(token, logprob)
        if len(self.offsets) < len(self.seq.token_ids):
            self.offsets.append(offset)
        return event

    def take(self, text: str) -> list[TokenInfo]:
        """Count `text` as sent; return the tokens whose text starts in what is sent now.

        At the end every token counts unless a stop string or truncation cut the text.
        """
        self.sent_chars += len(text)
        count = len(self.seq.token_ids)
        end = count if self.seq.completion is not None and not self.seq.stop.cut else self.sent_tokens
        while end < count and self.offsets[end] < self.sent_chars:
            end += 1
        start, self.sent_tokens = self.sent_tokens, max(end, self.sent_tokens)
        return self.token_infos(start, end)

    def token_infos(self, start: int, end: int) -> list[TokenInfo]:
        logprobs = self.seq.logprobs
        return [
            TokenInfo(t, logprobs[i].logprob, logprobs[i].top, self.offsets[i])
            if logprobs is not None
            else TokenInfo(t, offset=self.offsets[i])
            for i, t in enumerate(self.seq.token_ids[start:end], start)
        ]


# ----------------------------------------------------------------------------------- scheduler


class Scheduler:
    """Owns the model thread, the waiting queue and the running batch (`share_prefix` as `Generator`'s).

    `step_hook` (called by the model thread before each step) and `finish_hook` (called with
    each job whose last choice finished) let tests and instrumentation follow the steps.
    """

    def __init__(
        self,
        model: CodeGenForCausalLM,
        tokenizer: CodeGenTokenizer,
        *,
        max_batch: int = 16,
        max_queue: int = 256,
        metrics: Metrics | None = None,
        share_prefix: bool | None = None,
    ):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.metrics = metrics or Metrics()
        # its per-sequence state and limits are ours too, and its rule for sharing prompts (None: on CPU)
        self.generator = Generator(model, tokenizer, share_prefix=share_prefix)
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()  # jobs with a group still waiting, in admission order
        self._cancelled: set[Job] = set()
        self._batch = self._new_batch()
        self._outbox: list[tuple[Job, Any]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.step_hook: Callable[[], None] | None = None
        self.finish_hook: Callable[[Job], None] | None = None

    def _new_batch(self) -> RunningBatch:
        """An empty running batch; rows of one prompt (n > 1) share its cache where the engine's
        rule says that pays (`Generator.share_prefix`)."""
        return RunningBatch(self.model, share_prefix=self.generator.share_prefix,
                            share_min_prompt=self.generator.share_min_prompt)

    # ------------------------------------------------------------------ asyncio side

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="opencodegen-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current step, fail whatever is left, and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    def submit(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        *,
        stream: bool = False,
        prompt_logprobs: bool = False,
        prompt_only: bool = False,
    ) -> Job:
        """Queue a request; raises QueueFull or ShuttingDown. Call from the event loop.

        `prompt_logprobs`: send each prompt's token logprobs first; `prompt_only`: generate nothing
        (OpenAI's max_tokens=0, used to score a prompt with echo and logprobs).
        """
        if params.n > self.max_batch:
            raise ValueError(f"n={params.n} exceeds the batch size {self.max_batch}")
        job = Job(self, prompts, params, stream=stream, prompt_logprobs=prompt_logprobs, prompt_only=prompt_only,
                  loop=asyncio.get_running_loop())
        with self._cond:
            if self._stopping or self._thread is None:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already")
            self._waiting.append(job)
            self.metrics.set_load(len(self._waiting), len(self._batch))
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        with self._cond:
            if job.cancelled or job.unfinished == 0:
                return
            job.cancelled = True
            if job.unadmitted:
                self._waiting.remove(job)
            self._cancelled.add(job)
            self._cond.notify()

    # ------------------------------------------------------------------ model thread

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                if self.step_hook is not None:
                    self.step_hook()
                with self._cond:
                    while not (self._stopping or self._waiting or self._batch.rows or self._cancelled):
                        self._cond.wait()
                    if self._stopping:
                        break
                    groups = self._admit()
                    cancelled, self._cancelled = self._cancelled, set()
                try:
                    self._drop(cancelled)
                    if groups:
                        self._prefill(groups)
                    if self._batch.rows:
                        self._decode()
                except Exception as exc:  # a model failure must not kill the server
                    log.exception("generation step failed")
                    self._fail({g.job for g in groups} | {s.job for s in self._batch.rows}, f"generation failed: {exc}")
                    self._batch = self._new_batch()
                self.metrics.set_load(len(self._waiting), len(self._batch))
                self._flush()
        with self._cond:
            left = set(self._waiting) | {s.job for s in self._batch.rows}
            self._waiting.clear()
        self._batch = self._new_batch()
        self._fail(left, "the server is shutting down")
        self._flush()

    def _admit(self) -> list[_Group]:
        """Pop the waiting groups that fit into the batch, one per job in turn (holds the lock)."""
        free, budget, groups, width = self.max_batch - len(self._batch), PREFILL_TOKEN_BUDGET, [], 0
        while self._waiting:
            job = self._waiting[0]
            group = _Group(job, job.next_prompt)
            width = max(width, group.width)
            if job.params.n > free or (groups and width * (len(groups) + 1) > budget):
                break
            self._waiting.popleft()
            groups.append(group)
            free -= job.params.n
            job.next_prompt += 1
            job.unadmitted -= 1
            if job.unadmitted:
                self._waiting.append(job)  # its next prompt waits for the others' turn
            else:
                self.metrics.observe(queue_wait=time.monotonic() - job.arrival)
        return groups

    def _prefill(self, groups: list[_Group]) -> None:
        """Prefill each prompt once, repeat its cache row for the n samples, sample their first token."""
        rows = [_Row(g.job, g.prompt_index, s, self.generator) for g in groups for s in range(g.job.params.n)]
        owner = [i for i, g in enumerate(groups) for _ in range(g.job.params.n)]
        room = max(r.room for r in (*rows, *self._batch.rows))
        prompts = [g.prompt for g in groups]
        prefilled = prefill(
            self.model, prompts, self.tokenizer.pad_token_id, 0 if self._batch.rows else room,
            all_logits=any(g.job.prompt_logprobs for g in groups),
        )
        self.metrics.add_tokens(prompt=sum(map(len, prompts)))
        for g, group_logits in zip(groups, prefilled.logits):
            if g.job.prompt_logprobs:
                self._emit(g.job, PromptLogprobs(g.prompt_index, self._prompt_logprobs(g, group_logits)))
        for r in rows:
            if r.job.prompt_only:
                self._finish(r, "", "length")
        live = [i for i, r in enumerate(rows) if not r.job.prompt_only]
        if not live:
            return
        repeats = [0 if g.job.prompt_only else g.job.params.n for g in groups]
        self._batch.add([(prefilled.cache, prefilled.mask, repeats)], [rows[i] for i in live], room)
        first = len(self._batch) - len(live)
        index = torch.tensor([owner[i] for i in live], device=prefilled.logits.device)
        self._advance(list(range(first, len(self._batch))), prefilled.next_logits[index])

    def _decode(self) -> None:
        tokens = torch.tensor([r.seq.token_ids[-1] for r in self._batch.rows])
        self._advance(list(range(len(self._batch))), self._batch.step(tokens))

    def _advance(self, positions: list[int], logits: torch.Tensor) -> None:
        """Sample the next token of the batch rows at `positions` from `logits` [len, V]; drop finished rows."""
        rows = [self._batch.rows[i] for i in positions]
        tokens, logprobs = self._sample(logits[:, : self.generator.vocab_limit].float(), rows)
        self.metrics.add_tokens(generated=len(rows))
        finished = set()
        for position, row, token, logprob in zip(positions, rows, tokens, logprobs):
            job = row.job
            if not job.first_token_seen:
                job.first_token_seen = True
                self.metrics.observe(first_token=time.monotonic() - job.arrival)
            event = row.accept(token, logprob)
            if event is None:
                continue
            if event.completion is not None:
                finished.add(position)
                completion = event.completion
                if job.stream:
                    self._finish(row, event.delta, completion.finish_reason)
                else:
                    row.take(event.delta)
                    self._finish(row, completion.text, completion.finish_reason, row.token_infos(0, row.sent_tokens))
            elif job.stream:
                self._emit(job, Delta(row.index, event.delta, row.take(event.delta)))
            else:
                row.take(event.delta)
        if finished:
            self._batch.keep([i for i in range(len(self._batch)) if i not in finished])

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> tuple[list[int], list[Any]]:
        """One token per row (rows with equal sampling settings together) and, where asked, its logprobs."""
        chosen = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            p = r.job.params
            groups[(p.greedy, p.temperature, p.top_p, p.top_k, p.presence_penalty, p.frequency_penalty)].append(i)
        for idx in groups.values():
            params = rows[idx[0]].job.params
            uniforms = None if params.greedy else torch.stack([rows[i].uniform for i in idx])
            scores = penalize(logits[idx], [rows[i].seq.token_ids for i in idx], params)
            chosen[idx] = sample_tokens(scores, params, uniforms)
        logprobs: list[Any] = [None] * len(rows)
        wanted = [i for i, r in enumerate(rows) if r.job.params.logprobs is not None]
        if wanted:
            k = max(rows[i].job.params.logprobs for i in wanted)
            for i, (lp, top) in zip(wanted, token_logprobs(logits[wanted], chosen[wanted], k)):
                logprobs[i] = (lp, top[: rows[i].job.params.logprobs])
        return chosen.tolist(), logprobs

    def _prompt_logprobs(self, group: _Group, logits: torch.Tensor) -> list[TokenInfo]:
        """Log-probabilities of each prompt token given the ones before it (the first has none)."""
        prompt = group.prompt
        k = group.job.params.logprobs or 0
        logits = logits[-len(prompt) :, : self.generator.vocab_limit].float()
        scored = token_logprobs(logits[:-1], torch.tensor(prompt[1:], device=logits.device), k)
        decoder, offset, infos = IncrementalDecoder(self.tokenizer), 0, []
        for i, token in enumerate(prompt):
            lp, top = scored[i - 1] if i else (None, None)
            infos.append(TokenInfo(token, lp, top, offset))
            offset += len(decoder.push(token))
        return infos

    def _finish(self, row: _Row, text: str, reason: str, tokens: list[TokenInfo] | None = None) -> None:
        """Report a finished row: the text not sent before and the tokens not reported before."""
        job = row.job
        if tokens is None:
            tokens = row.take(text)
        self._emit(job, Finished(row.index, text, tokens, reason, len(row.seq.token_ids)))
        job.unfinished -= 1
        if job.unfinished == 0:
            self.metrics.observe(latency=time.monotonic() - job.arrival)
            if self.finish_hook is not None:
                self.finish_hook(job)

    def _drop(self, jobs: set[Job]) -> None:
        """Remove the sequences of these (cancelled) jobs from the batch."""
        if jobs:
            self._batch.keep([i for i, s in enumerate(self._batch.rows) if s.job not in jobs])

    def _fail(self, jobs: set[Job], message: str) -> None:
        for job in jobs:
            job.unfinished = 0
            self._emit(job, Failed(message))

    def _emit(self, job: Job, event: Any) -> None:
        if not job.cancelled:
            self._outbox.append((job, event))

    def _flush(self) -> None:
        """Hand this step's events to their event loops (one wake-up per loop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]] = defaultdict(list)
        for job, event in self._outbox:
            by_loop[job._loop].append((job, event))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is listening
                pass


def _deliver(items: list[tuple[Job, Any]]) -> None:
    for job, event in items:
        job.events.put_nowait(event)

