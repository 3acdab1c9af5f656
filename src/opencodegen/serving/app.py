"""The HTTP server: OpenAI-compatible completions, models, health, metrics, and the multi-turn
synthesis page with its session API.

    app = create_app(model, tokenizer, model_name="codegen-350M-mono")
    uvicorn.run(app, host="127.0.0.1", port=8000, http=header_timeout_protocol())

The event loop only routes: parsing and tokenizing a completion request run on a small thread
pool, the model on the scheduler's thread, each session on its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from opencodegen.model import CodeGenForCausalLM
from opencodegen.serving.chat import (
    ChatRun,
    PreparedChat,
    conversation,
    conversation_prompt,
    prepare_chat,
    start_chat,
)
from opencodegen.serving.completions import (
    ClientGone,
    CompletionRun,
    Limits,
    Prepared,
    prepare,
    start_completion,
)
from opencodegen.serving.guard import BODY_TIMEOUT_S, MAX_BODY_BYTES, HTTPGuard
from opencodegen.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from opencodegen.serving.metrics import Metrics
from opencodegen.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    SessionCreate,
    TokenizeRequest,
    TurnCreate,
    TurnEdit,
    parse_body,
)
from opencodegen.serving.scheduler import QueueFull, Scheduler, ShuttingDown
from opencodegen.serving.sessions import SessionStore
from opencodegen.synthesis.session import Session
from opencodegen.tokenizer import CodeGenTokenizer

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
RETRY_AFTER_S = 1
EXPIRY_SWEEP_S = 60.0  # how often idle sessions are looked for
TOKENIZER_THREADS = 2


def create_app(
    model: CodeGenForCausalLM,
    tokenizer: CodeGenTokenizer,
    *,
    model_name: str = "codegen",
    api_key: str | None = None,
    max_batch: int = 16,
    max_queue: int = 256,
    max_tokens_limit: int | None = None,
    max_sessions: int = 16,
    session_factory: Callable[[], Session] = Session,
    allowed_hosts: Iterable[str] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout: float = BODY_TIMEOUT_S,
    max_prompts: int = 2048,
    session_ttl: float = 1800.0,
    session_memory_budget_mb: int | None = None,
    max_sessions_per_client: int = 4,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """A FastAPI app serving `model`; its scheduler thread runs while the app is up (lifespan).

    `allowed_hosts`: Host names served besides the loopback ones ("*": any); `clock` times the
    sessions' idle expiry.
    """
    context = model.config.n_positions
    limits = Limits(context=context, max_tokens=min(max_tokens_limit or context, context), max_n=max_batch,
                    max_prompts=max_prompts)
    metrics = Metrics()
    scheduler = Scheduler(model, tokenizer, max_batch=max_batch, max_queue=max_queue, metrics=metrics)
    sessions = SessionStore(scheduler, tokenizer, context, max_sessions=max_sessions, session_factory=session_factory,
                            ttl_s=session_ttl, memory_budget_mb=session_memory_budget_mb,
                            max_per_client=max_sessions_per_client, clock=clock)
    tokenize_pool = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="opencodegen-tokenize")
    started = int(time.time())

    async def sweep_idle_sessions() -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_S)
            sessions.expire()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        sweeper = asyncio.ensure_future(sweep_idle_sessions())
        try:
            yield
        finally:
            sweeper.cancel()
            scheduler.stop()
            sessions.close()
            tokenize_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="opencodegen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.metrics, app.state.sessions = scheduler, metrics, sessions

    # ------------------------------------------------------------------ errors and auth

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _path_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        error = APIError(400, f"Invalid value for {err['loc'][-1]}: {err['msg']}", param=str(err["loc"][-1]),
                         code="invalid_value")
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return JSONResponse(APIError(500, "internal server error", type="server_error").body(), status_code=500)

    if api_key is not None:
        app.add_middleware(BearerAuth, api_key=api_key)
    # outermost (added last): runs before the key check and the routes
    app.add_middleware(HTTPGuard, allowed_hosts=allowed_hosts, max_body_bytes=max_body_bytes,
                       body_timeout=body_timeout)

    # ------------------------------------------------------------------ OpenAI API

    def check_model(name: str | None) -> None:
        if name not in (None, model_name):
            raise APIError(404, f"The model `{name}` does not exist (this server has `{model_name}`).",
                           param="model", code="model_not_found")

    def read_completion(raw: bytes) -> Prepared:
        """Parse, check and tokenize a completion request (on the tokenizer pool, off the event loop)."""
        body = parse_body(raw, CompletionRequest)
        check_model(body.model)
        return prepare(body, tokenizer, limits)

    def read_chat(raw: bytes) -> PreparedChat:
        """Parse, check and tokenize a chat request (on the tokenizer pool)."""
        body = parse_body(raw, ChatCompletionRequest)
        check_model(body.model)
        return prepare_chat(body, tokenizer, limits)

    async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(tokenize_pool, fn, *args)

    @contextlib.contextmanager
    def counted() -> Iterator[None]:
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

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        with counted():
            prepared = await off_loop(read_completion, await request.body())
            run = start_completion(prepared, scheduler, tokenizer, model_name)
        return await answer(run, request, bool(prepared.body.stream))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        with counted():
            prepared = await off_loop(read_chat, await request.body())
            run = await start_chat(prepared, scheduler, model_name, sessions if prepared.body.execute else None,
                                   client_address(request))
        return await answer(run, request, bool(prepared.body.stream))

    def read_tokenize(raw: bytes) -> dict[str, Any]:
        body = parse_body(raw, TokenizeRequest)
        check_model(body.model)
        body.check()
        if body.messages is not None:
            text = conversation_prompt(*conversation(body.messages))
        else:
            text = body.prompt
        ids = tokenizer.encode(text)
        reply: dict[str, Any] = {"count": len(ids), "max_model_len": context, "tokens": ids}
        if body.return_token_strs:
            reply["token_strs"] = [tokenizer.id_to_token(t) for t in ids]
        return reply

    def read_detokenize(raw: bytes) -> dict[str, Any]:
        body = parse_body(raw, DetokenizeRequest)
        check_model(body.model)
        bad = next((t for t in body.tokens if not 0 <= t < len(tokenizer)), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is outside the vocabulary (0 … {len(tokenizer) - 1})",
                           param="tokens", code="invalid_value")
        return {"prompt": tokenizer.decode(body.tokens)}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        return await off_loop(read_tokenize, await request.body())

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        return await off_loop(read_detokenize, await request.body())

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": started, "owned_by": "opencodegen",
                "max_model_len": context}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict[str, Any]:
        if name != model_name:
            raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        return model_card()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "queue_depth": scheduler.queue_depth,
                "running_sequences": metrics.running_sequences}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # ------------------------------------------------------------------ sessions (the web page)

    def session_stream(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
        async def sse() -> AsyncIterator[str]:
            try:
                async for event in events:
                    yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
            except (APIError, QueueFull, ShuttingDown) as exc:
                message = exc.message if isinstance(exc, APIError) else f"the server is busy: {exc}"
                yield f"data: {json.dumps({'type': 'error', 'message': message})}\n\n"
            except Exception as exc:  # e.g. the sandbox failed: the page still hears why
                log.exception("session turn failed")
                message = f"internal error: {type(exc).__name__}: {exc}"
                yield f"data: {json.dumps({'type': 'error', 'message': message})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/v1/sessions", status_code=201)
    async def create_session(request: Request) -> dict[str, Any]:
        raw = await request.body()
        entry = sessions.create(parse_body(raw or b"{}", SessionCreate), client_address(request))
        return await entry.call(entry.state)

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str) -> dict[str, Any]:
        entry = sessions.get(session_id)
        return await entry.call(entry.state)

    @app.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str) -> dict[str, Any]:
        sessions.delete(session_id)
        return {"id": session_id, "deleted": True}

    @app.post("/v1/sessions/{session_id}/turns")
    async def add_turn(session_id: str, request: Request) -> StreamingResponse:
        body = parse_body(await request.body(), TurnCreate)
        entry = sessions.get(session_id)
        return session_stream(sessions.turn_events(entry, body.instruction, body.code, None))

    @app.post("/v1/sessions/{session_id}/turns/{index}/retry")
    async def retry_turn(session_id: str, index: int) -> StreamingResponse:
        entry = sessions.get(session_id)
        await entry.call(entry.turn, index)  # a 404 now rather than an error inside the stream
        return session_stream(sessions.turn_events(entry, None, None, index))

    @app.put("/v1/sessions/{session_id}/turns/{index}")
    async def edit_turn(session_id: str, index: int, request: Request) -> dict[str, Any]:
        body = parse_body(await request.body(), TurnEdit)
        entry = sessions.get(session_id)
        async with entry.lock:
            await entry.call(entry.turn, index)
            await entry.call(entry.session.edit_turn, index, body.code)
            return await entry.call(entry.state)

    @app.post("/v1/sessions/{session_id}/undo")
    async def undo(session_id: str) -> dict[str, Any]:
        entry = sessions.get(session_id)
        async with entry.lock:
            await entry.call(entry.session.undo)
            return await entry.call(entry.state)

    @app.get("/v1/sessions/{session_id}/export")
    async def export(session_id: str) -> Response:
        entry = sessions.get(session_id)
        program = await entry.call(entry.session.program)
        return Response(program, media_type="text/x-python; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="session-{session_id}.py"'})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


#: Paths outside /v1/ that need the API key too.
KEYED_PATHS = frozenset({"/metrics", "/tokenize", "/detokenize"})


class BearerAuth:
    """ASGI middleware: /v1/*, /metrics, /tokenize and /detokenize need `Authorization: Bearer <api_key>`."""

    def __init__(self, app: Any, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path.startswith("/v1/") or path in KEYED_PATHS):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
                error = APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                                 code="invalid_api_key")
                response = JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
