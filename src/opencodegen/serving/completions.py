"""POST /v1/completions: from a validated request to scheduler jobs, and from job events to
OpenAI's response JSON or its server-sent event stream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from opencodegen.generation.sampling import SamplingParams
from opencodegen.serving.protocol import APIError, CompletionRequest, SamplingFields
from opencodegen.serving.scheduler import Delta, Failed, Finished, Job, PromptLogprobs, Scheduler, TokenInfo
from opencodegen.tokenizer import CodeGenTokenizer


@dataclass
class Limits:
    """What a request may ask for."""

    context: int  # n_positions of the model
    max_tokens: int  # --max-tokens-limit
    max_n: int  # samples per prompt (the batch must hold them all)
    max_prompts: int = 2048  # prompts per request


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


@dataclass
class Prepared:
    """A validated completion request, tokenized."""

    body: CompletionRequest
    prompts: list[list[int]]  # what the model sees (an empty prompt becomes [EOS])
    echo_texts: list[str]
    echo_lengths: list[int]  # prompt tokens the client gave (echo logprobs cover these)
    params: SamplingParams
    max_tokens: int


def prepare(body: CompletionRequest, tokenizer: CodeGenTokenizer, limits: Limits) -> Prepared:
    """Check a request against the model and the server limits; tokenize its prompts."""
    body.check()
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    check_budget(body, max_tokens, limits)
    items = body.prompt_items()
    if len(items) > limits.max_prompts:
        raise APIError(400, f"{len(items)} prompts in one request: this server allows at most {limits.max_prompts} "
                       "(split the request)", param="prompt", code="too_many_prompts")
    texts = [p for p in items if isinstance(p, str)]
    encoded = iter(tokenizer.encode_batch(texts) if texts else [])
    prompts, echo_texts = [], []
    for item in items:
        if isinstance(item, str):
            prompts.append(next(encoded))
            echo_texts.append(item)
        else:
            bad = next((t for t in item if not 0 <= t < len(tokenizer)), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is outside the vocabulary (0 … {len(tokenizer) - 1})", param="prompt")
            prompts.append(list(item))
            echo_texts.append(tokenizer.decode(item))
    echo_lengths = [len(p) for p in prompts]
    prompts = [p or [tokenizer.eos_token_id] for p in prompts]
    for p in prompts:
        check_context(len(p), max_tokens, limits, "prompt")
    params = sampling_params(body, max(max_tokens, 1), logprobs=body.logprobs)
    return Prepared(body, prompts, echo_texts, echo_lengths, params, max_tokens)


def check_budget(body: SamplingFields, max_tokens: int, limits: Limits) -> None:
    """n and the completion budget within the server's limits."""
    if (body.n or 1) > limits.max_n:
        raise APIError(400, f"n={body.n} is too large: this server allows at most {limits.max_n}", param="n")
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens={max_tokens} is over this server's limit of {limits.max_tokens}",
                       param="max_tokens", code="max_tokens_exceeded")


def check_context(prompt_tokens: int, max_tokens: int, limits: Limits, param: str) -> None:
    """A prompt and its completion budget must fit the model's context."""
    if prompt_tokens + max_tokens > limits.context:
        raise APIError(
            400,
            f"This model's maximum context length is {limits.context} tokens, however you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in your prompt; {max_tokens} for the completion). "
            "Please reduce your prompt or completion length.",
            param=param, code="context_length_exceeded",
        )


def sampling_params(body: SamplingFields, max_new_tokens: int, **extra: Any) -> SamplingParams:
    """The engine's sampling parameters of a request's sampling fields (None fields at OpenAI's defaults)."""
    return SamplingParams(
        n=body.n or 1, max_new_tokens=max_new_tokens, temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, top_k=body.sampling_top_k, seed=body.seed,
        stop=body.stop_list, presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0, ignore_eos=bool(body.ignore_eos), **extra,
    )


class _Logprobs:
    """OpenAI's legacy logprobs object: tokens, token_logprobs, top_logprobs, text_offset."""

    def __init__(self, tokenizer: CodeGenTokenizer):
        self.tokenizer = tokenizer
        self.data: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def token_text(self, token: int) -> str:
        raw = self.tokenizer.token_bytes(token)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: shown as OpenAI does
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def add(self, tokens: list[TokenInfo], shift: int) -> _Logprobs:
        for t in tokens:
            self.data["tokens"].append(self.token_text(t.token))
            self.data["token_logprobs"].append(t.logprob)
            if t.top is None:
                self.data["top_logprobs"].append(None)
            else:
                top = {self.token_text(i): lp for i, lp in t.top}
                top.setdefault(self.token_text(t.token), t.logprob)
                self.data["top_logprobs"].append(top)
            self.data["text_offset"].append(t.offset + shift)
        return self


class CompletionRun:
    """Turns the events of one job into a response body or a stream of chunks."""

    def __init__(self, prepared: Prepared, job: Job, tokenizer: CodeGenTokenizer, model_name: str):
        self.p, self.job, self.tokenizer = prepared, job, tokenizer
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_name = model_name
        self.n = prepared.params.n
        self.completion_tokens = 0
        self.echo = bool(prepared.body.echo)
        self.logprobs = prepared.body.logprobs is not None

    def _shift(self, index: int) -> int:
        return len(self.p.echo_texts[index // self.n]) if self.echo else 0

    def _echo_logprobs(self, event: PromptLogprobs) -> list[TokenInfo]:
        count = self.p.echo_lengths[event.prompt_index]
        return event.tokens[len(event.tokens) - count :] if count else []

    def usage(self) -> dict[str, int]:
        prompt = sum(map(len, self.p.prompts))
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens}

    # ------------------------------------------------------------------ whole response

    async def response(self, request: Request) -> dict[str, Any]:
        texts = [self.p.echo_texts[i // self.n] if self.echo else "" for i in range(self.job.choices)]
        logprobs = [_Logprobs(self.tokenizer) for _ in range(self.job.choices)]
        reasons: dict[int, str] = {}
        async for event in job_events(self.job, request):
            if isinstance(event, PromptLogprobs):
                for i in range(event.prompt_index * self.n, (event.prompt_index + 1) * self.n):
                    logprobs[i].add(self._echo_logprobs(event), 0)
            elif isinstance(event, Finished):
                texts[event.index] += event.text
                logprobs[event.index].add(event.tokens, self._shift(event.index))
                reasons[event.index] = event.finish_reason
                self.completion_tokens += event.completion_tokens
        choices = [
            {"text": texts[i], "index": i, "logprobs": logprobs[i].data if self.logprobs else None,
             "finish_reason": reasons[i]}
            for i in range(self.job.choices)
        ]
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name,
                "choices": choices, "usage": self.usage()}

    # ------------------------------------------------------------------ stream

    def _chunk(self, index: int, text: str, tokens: list[TokenInfo] | None, reason: str | None, shift: int) -> str:
        logprobs = _Logprobs(self.tokenizer).add(tokens or [], shift).data if self.logprobs else None
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": reason}
        return sse_event({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name,
                     "choices": [choice]})

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events, one chunk per text delta, then `data: [DONE]`; cancels the job if cut off."""
        try:
            if self.echo and not self.logprobs:
                for i in range(self.job.choices):
                    yield self._chunk(i, self.p.echo_texts[i // self.n], None, None, 0)
            async for event in job_events(self.job, None):
                if isinstance(event, PromptLogprobs):
                    tokens = self._echo_logprobs(event)
                    for i in range(event.prompt_index * self.n, (event.prompt_index + 1) * self.n):
                        yield self._chunk(i, self.p.echo_texts[event.prompt_index], tokens, None, 0)
                elif isinstance(event, Delta):
                    yield self._chunk(event.index, event.text, event.tokens, None, self._shift(event.index))
                elif isinstance(event, Finished):
                    self.completion_tokens += event.completion_tokens
                    yield self._chunk(event.index, event.text, event.tokens, event.finish_reason,
                                      self._shift(event.index))
            options = self.p.body.stream_options
            if options is not None and options.include_usage:
                yield sse_event({"id": self.id, "object": "text_completion", "created": self.created,
                            "model": self.model_name, "choices": [], "usage": self.usage()})
        except APIError as exc:
            yield sse_event(exc.body())
        finally:
            self.close()
        yield "data: [DONE]\n\n"

    def close(self) -> None:
        """Stop the job if it still runs (the client left); a no-op when it finished."""
        self.job.cancel()


def sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def job_events(job: Job, request: Request | None) -> AsyncIterator[Any]:
    """The job's events until every choice finished; raises ClientGone if `request` disconnects first."""
    disconnect = asyncio.ensure_future(_disconnected(request)) if request is not None else None
    finished = 0
    try:
        while finished < job.choices:
            if disconnect is None:
                event = await job.next_event()
            else:
                get = asyncio.ensure_future(job.next_event())
                await asyncio.wait({get, disconnect}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    job.cancel()
                    raise ClientGone()
                event = get.result()
            if isinstance(event, Failed):
                raise APIError(500, event.message, type="server_error", code="generation_failed")
            finished += isinstance(event, Finished)
            yield event
    finally:
        if disconnect is not None:
            disconnect.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed the connection (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def start_completion(
    prepared: Prepared, scheduler: Scheduler, tokenizer: CodeGenTokenizer, model_name: str
) -> CompletionRun:
    """Queue a prepared request (call on the event loop); answer with `.response()` or `.stream()`."""
    body = prepared.body
    job = scheduler.submit(
        prepared.prompts, prepared.params, stream=bool(body.stream),
        prompt_logprobs=bool(body.echo) and body.logprobs is not None, prompt_only=prepared.max_tokens == 0,
    )
    return CompletionRun(prepared, job, tokenizer, model_name)
