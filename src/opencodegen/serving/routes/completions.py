"""POST /v1/completions and /v1/chat/completions: the request is parsed and tokenized on the
tokenizer pool, run on the scheduler, and answered with its event stream or its whole response."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from opencodegen.serving.chat import ChatRun, PreparedChat, prepare_chat, start_chat
from opencodegen.serving.completions import ClientGone, CompletionRun, Prepared, prepare, start_completion
from opencodegen.serving.metrics import Metrics
from opencodegen.serving.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_body
from opencodegen.serving.routes.common import (
    SSE_HEADERS,
    ServerSettings,
    check_model,
    client_address,
    off_loop,
)
from opencodegen.serving.scheduler import QueueFull, ShuttingDown
from opencodegen.tokenizer import CodeGenTokenizer

RETRY_AFTER_S = 1

router = APIRouter()


def read_completion(raw: bytes, tokenizer: CodeGenTokenizer, settings: ServerSettings) -> Prepared:
    """Parse, check and tokenize a completion request (on the tokenizer pool, off the event loop)."""
    body = parse_body(raw, CompletionRequest)
    check_model(body.model, settings)
    return prepare(body, tokenizer, settings.limits)


def read_chat(raw: bytes, tokenizer: CodeGenTokenizer, settings: ServerSettings) -> PreparedChat:
    """Parse, check and tokenize a chat request (on the tokenizer pool)."""
    body = parse_body(raw, ChatCompletionRequest)
    check_model(body.model, settings)
    return prepare_chat(body, tokenizer, settings.limits)


@contextlib.contextmanager
def counted(metrics: Metrics) -> Iterator[None]:
    """Count a refused request by its outcome and answer busy queues as 429/503."""
    try:
        yield
    except QueueFull as exc:
        metrics.count_request("rejected")
        raise APIError(429, f"The server is busy ({exc}); retry later.", type="server_busy",
                       code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except ShuttingDown as exc:
        metrics.count_request("rejected")
        raise APIError(503, str(exc), type="server_busy", code="shutting_down",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except APIError:
        metrics.count_request("invalid")
        raise


async def answer(run: CompletionRun | ChatRun, request: Request, stream: bool) -> Response:
    """The run's stream, or its whole response (499 when the client left first); closes the run after."""
    metrics = request.app.state.metrics
    if stream:
        metrics.count_request("stream")

        async def events() -> AsyncIterator[str]:
            try:
                async for event in run.stream():
                    yield event
            finally:
                run.close()

        # the background task closes a run whose stream never started (the client left at once)
        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS,
                                 background=BackgroundTask(run.close))
    try:
        result = await run.response(request)
    except ClientGone:
        metrics.count_request("cancelled")
        return Response(status_code=499)
    except APIError:
        metrics.count_request("error")
        raise
    finally:
        run.close()
    metrics.count_request("ok")
    return JSONResponse(result)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = request.app.state
    with counted(state.metrics):
        prepared = await off_loop(request, read_completion, await request.body(), state.tokenizer, state.settings)
        run = start_completion(prepared, state.scheduler, state.tokenizer, state.settings.model_name)
    return await answer(run, request, bool(prepared.body.stream))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = request.app.state
    with counted(state.metrics):
        prepared = await off_loop(request, read_chat, await request.body(), state.tokenizer, state.settings)
        run = await start_chat(prepared, state.scheduler, state.settings.model_name,
                               state.sessions if prepared.body.execute else None, client_address(request))
    return await answer(run, request, bool(prepared.body.stream))
