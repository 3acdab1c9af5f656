"""POST /v1/chat/completions: a conversation mapped onto CodeGen's multi-turn program-synthesis
format, and the job's events turned into OpenAI's chat.completion JSON or chunk stream.

Each user message is an instruction turn and each assistant message the code of that turn; the
prompt is the program of the earlier turns plus the comment of the last instruction, built by
`opencodegen.synthesis.history` exactly as `eval mtpb` and the session page build theirs. The
reply is the code of that turn, cut by CodeGen's truncation rules. With `execute`, the turns run
in a sandboxed interpreter of the session store (its bounds apply) and each choice carries what
its code printed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from opencodegen.generation.sampling import SamplingParams
from opencodegen.serving.completions import (
    Limits,
    check_budget,
    check_context,
    job_events,
    sampling_params,
    sse_event,
)
from opencodegen.serving.protocol import APIError, ChatCompletionRequest, ChatMessage
from opencodegen.serving.scheduler import Delta, Finished, Job, Scheduler
from opencodegen.serving.sessions import SessionEntry, SessionStore
from opencodegen.synthesis.history import build_program, turn_prompt
from opencodegen.synthesis.session import Session
from opencodegen.tokenizer import CodeGenTokenizer

log = logging.getLogger(__name__)

ROLES = ("user", "assistant")


def conversation(messages: list[ChatMessage]) -> tuple[list[tuple[str, str]], str | None]:
    """The (instruction, code) turns of a conversation and its pending instruction (None when it
    ends with the assistant's code). Messages must alternate user, assistant, ..., from a user."""
    for i, message in enumerate(messages):
        param = f"messages.{i}"
        if message.role in ("system", "developer"):
            raise APIError(400, f"{param}: {message.role} messages have no place in CodeGen's multi-turn format "
                           "(per turn an instruction comment and its code); leave them out", param=param,
                           code="unsupported_parameter")
        expected = ROLES[i % 2]
        if message.role != expected:
            raise APIError(400, f"{param}: expected a {expected} message, got role {message.role!r} (the conversation "
                           "alternates user instructions and the assistant's code, starting with a user)",
                           param=param, code="invalid_value")
        if expected == "user" and not message.text.strip():
            raise APIError(400, f"{param}: an instruction must not be empty", param=param, code="invalid_value")
    turns = [(messages[i].text, messages[i + 1].text) for i in range(0, len(messages) - 1, 2)]
    return turns, messages[-1].text if len(messages) % 2 else None


def conversation_prompt(turns: list[tuple[str, str]], instruction: str | None) -> str:
    """The program of `turns` followed by the comment of `instruction` (what the model continues)."""
    program = build_program(turns)
    return program if instruction is None else program + turn_prompt(instruction)


@dataclass
class PreparedChat:
    """A validated chat request: its turns, the prompt's token ids and the sampling parameters."""

    body: ChatCompletionRequest
    turns: list[tuple[str, str]]
    instruction: str
    prompt: list[int]
    params: SamplingParams


def prepare_chat(body: ChatCompletionRequest, tokenizer: CodeGenTokenizer, limits: Limits) -> PreparedChat:
    """Check a chat request against the model and the server limits; build and tokenize its prompt."""
    body.check()
    turns, instruction = conversation(body.messages)
    if instruction is None:
        param = f"messages.{len(body.messages) - 1}"
        raise APIError(400, f"{param}: the conversation must end with a user message (the instruction of the turn "
                       "to write)", param=param, code="invalid_value")
    prompt = tokenizer.encode(conversation_prompt(turns, instruction))
    wanted = body.token_limit
    max_tokens = min(limits.max_tokens, limits.context - len(prompt)) if wanted is None else wanted
    check_budget(body, max_tokens, limits)
    check_context(len(prompt), max(max_tokens, 1), limits, "messages")
    params = sampling_params(body, max_tokens, truncate="codegen")
    return PreparedChat(body, turns, instruction, prompt, params)


def run_turn(session: Session, instruction: str, code: str, keep: bool = False) -> dict[str, Any]:
    """Run a turn's code after the session's turns (on the session's thread); what it printed.

    Without `keep` the turn is taken back, so each choice runs on the same state.
    """
    turn = session.add_turn(instruction, code)
    if not keep:
        session.undo()
    return dataclasses.asdict(turn.output)


def run_history(session: Session, turns: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Run the conversation's earlier turns in order (on the session's thread); their outputs."""
    return [run_turn(session, instruction, code, keep=True) for instruction, code in turns]


class ChatRun:
    """Turns the events of one chat job into a chat.completion body or a chunk stream; with a lent
    session (`execute`), runs the earlier turns at once and each choice's code when it is done."""

    def __init__(self, prepared: PreparedChat, job: Job, model_name: str,
                 lent: tuple[SessionStore, SessionEntry] | None):
        self.p, self.job, self.model_name, self.lent = prepared, job, model_name, lent
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.completion_tokens = 0
        # the session's calls run in order on its thread: the earlier turns run before any choice
        self.history: asyncio.Future[list[dict[str, Any]]] | None = None
        if lent is not None:
            entry = lent[1]
            self.history = asyncio.ensure_future(entry.call(run_history, entry.session, prepared.turns))

    def close(self) -> None:
        """Stop the job if it still runs and give the lent session back (idempotent)."""
        self.job.cancel()
        if self.history is not None and not self.history.done():
            self.history.cancel()
        if self.lent is not None:
            store, entry = self.lent
            store.release(entry)

    def usage(self) -> dict[str, int]:
        prompt = len(self.p.prompt)
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens}

    async def _execute(self, code: str) -> dict[str, Any]:
        assert self.lent is not None
        entry = self.lent[1]
        return await entry.call(run_turn, entry.session, self.p.instruction, code)

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model_name}

    async def response(self, request: Request) -> dict[str, Any]:
        texts = [""] * self.job.choices
        reasons: dict[int, str] = {}
        async for event in job_events(self.job, request):
            if isinstance(event, Finished):
                texts[event.index] += event.text
                reasons[event.index] = event.finish_reason
                self.completion_tokens += event.completion_tokens
        choices = []
        for i, text in enumerate(texts):
            choice = {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": reasons[i]}
            if self.lent is not None:
                choice["execution"] = await self._execute(text)
            choices.append(choice)
        body = {**self._head("chat.completion"), "choices": choices, "usage": self.usage()}
        if self.history is not None:
            body["history_execution"] = await self.history
        return body

    def _chunk(self, index: int, delta: dict[str, Any], reason: str | None = None, **extra: Any) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason, **extra}
        return sse_event({**self._head("chat.completion.chunk"), "choices": [choice]})

    async def stream(self) -> AsyncIterator[str]:
        """chat.completion.chunk events (a role delta, content deltas, a final chunk), then `data: [DONE]`."""
        texts = [""] * self.job.choices
        try:
            for i in range(self.job.choices):
                yield self._chunk(i, {"role": "assistant", "content": ""})
            async for event in job_events(self.job, None):
                if isinstance(event, (Delta, Finished)) and event.text:
                    texts[event.index] += event.text
                    yield self._chunk(event.index, {"content": event.text})
                if isinstance(event, Finished):
                    self.completion_tokens += event.completion_tokens
                    extra = {} if self.lent is None else {"execution": await self._execute(texts[event.index])}
                    yield self._chunk(event.index, {}, event.finish_reason, **extra)
            tail: dict[str, Any] = {}
            if self.history is not None:
                tail["history_execution"] = await self.history
            options = self.p.body.stream_options
            if options is not None and options.include_usage:
                tail["usage"] = self.usage()
            if tail:
                yield sse_event({**self._head("chat.completion.chunk"), "choices": [], **tail})
        except APIError as exc:
            yield sse_event(exc.body())
        except Exception as exc:  # e.g. the sandbox failed: the client still hears why
            log.exception("chat completion failed")
            yield sse_event(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body())
        finally:
            self.close()
        yield "data: [DONE]\n\n"


async def start_chat(prepared: PreparedChat, scheduler: Scheduler, model_name: str,
                     sessions: SessionStore | None = None, client: str = "") -> ChatRun:
    """Queue a prepared chat request (on the event loop); with `sessions`, lend one of their
    sessions (their bounds apply: a 429 when full) to run the code. Answer with `.response()`
    or `.stream()`, then `.close()`."""
    entry = None if sessions is None else await sessions.lend(client)
    try:
        job = scheduler.submit([prepared.prompt], prepared.params, stream=bool(prepared.body.stream))
    except BaseException:
        if entry is not None:
            sessions.release(entry)
        raise
    return ChatRun(prepared, job, model_name, None if entry is None else (sessions, entry))
