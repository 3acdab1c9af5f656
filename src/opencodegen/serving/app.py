"""The HTTP server: OpenAI-compatible completions, models, health, metrics, and the multi-turn
synthesis page with its session API.

    app = create_app(model, tokenizer, model_name="codegen-350M-mono")
    uvicorn.run(app, host="127.0.0.1", port=8000, http=header_timeout_protocol())

`create_app` builds the shared state (scheduler, tokenizer, settings, sessions, metrics, the
tokenizer pool) into `app.state` and includes the routes of `serving/routes/`, which read it there.
The event loop only routes: parsing and tokenizing a completion request run on a small thread
pool, the model on the scheduler's thread, each session on its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from opencodegen.model import CodeGenForCausalLM
from opencodegen.serving.completions import Limits
from opencodegen.serving.guard import BODY_TIMEOUT_S, MAX_BODY_BYTES, HTTPGuard
from opencodegen.serving.metrics import Metrics
from opencodegen.serving.protocol import APIError
from opencodegen.serving.routes import completions, models, monitoring, page, sessions, tokens
from opencodegen.serving.routes.common import ServerSettings
from opencodegen.serving.scheduler import Scheduler
from opencodegen.serving.sessions import SessionStore
from opencodegen.synthesis.session import Session
from opencodegen.tokenizer import CodeGenTokenizer

log = logging.getLogger(__name__)

EXPIRY_SWEEP_S = 60.0  # how often idle sessions are looked for
TOKENIZER_THREADS = 2
ROUTERS = (completions.router, tokens.router, models.router, monitoring.router, sessions.router, page.router)


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

    app = FastAPI(title="opencodegen", lifespan=lifespan, exception_handlers=ERROR_HANDLERS, docs_url=None,
                  redoc_url=None, openapi_url=None)
    state = app.state
    state.scheduler, state.metrics, state.tokenizer = scheduler, metrics, tokenizer
    state.settings = ServerSettings(model_name=model_name, limits=limits, started=int(time.time()))
    state.sessions = SessionStore(scheduler, tokenizer, context, max_sessions=max_sessions,
                                  session_factory=session_factory, ttl_s=session_ttl,
                                  memory_budget_mb=session_memory_budget_mb, max_per_client=max_sessions_per_client,
                                  clock=clock)
    state.tokenize_pool = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="opencodegen-tokenize")

    if api_key is not None:
        app.add_middleware(BearerAuth, api_key=api_key)
    # outermost (added last): runs before the key check and the routes
    app.add_middleware(HTTPGuard, allowed_hosts=allowed_hosts, max_body_bytes=max_body_bytes,
                       body_timeout=body_timeout)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    return app


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While the app is up: the scheduler's thread runs and idle sessions are swept; after, all stop."""
    state = app.state
    state.scheduler.start()
    sweeper = asyncio.ensure_future(sweep_idle_sessions(state.sessions))
    try:
        yield
    finally:
        sweeper.cancel()
        state.scheduler.stop()
        state.sessions.close()
        state.tokenize_pool.shutdown(wait=False, cancel_futures=True)


async def sweep_idle_sessions(store: SessionStore) -> None:
    while True:
        await asyncio.sleep(EXPIRY_SWEEP_S)
        store.expire()


# ---------------------------------------------------------------------- errors: one JSON shape


async def api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)


async def path_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    error = APIError(400, f"Invalid value for {err['loc'][-1]}: {err['msg']}", param=str(err["loc"][-1]),
                     code="invalid_value")
    return JSONResponse(error.body(), status_code=400)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse(APIError(500, "internal server error", type="server_error").body(), status_code=500)


ERROR_HANDLERS: dict[Any, Callable[..., Any]] = {
    APIError: api_error,
    StarletteHTTPException: http_error,
    RequestValidationError: path_error,
    Exception: internal_error,
}


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
