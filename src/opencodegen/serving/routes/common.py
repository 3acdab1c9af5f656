"""What the route modules share: the server's fixed settings, the model-name check, the tokenizer
pool that keeps parsing off the event loop, and the client's address."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from opencodegen.serving.completions import Limits
from opencodegen.serving.protocol import APIError

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class ServerSettings:
    """The settings of a running server (`app.state.settings`)."""

    model_name: str
    limits: Limits
    started: int  # Unix time the app was made: the model card's `created`


def check_model(name: str | None, settings: ServerSettings) -> None:
    """Refuse a request that names another model than the one served."""
    if name not in (None, settings.model_name):
        raise APIError(404, f"The model `{name}` does not exist (this server has `{settings.model_name}`).",
                       param="model", code="model_not_found")


async def off_loop(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on the app's tokenizer pool, so the event loop only routes."""
    return await asyncio.get_running_loop().run_in_executor(request.app.state.tokenize_pool, fn, *args)


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""
