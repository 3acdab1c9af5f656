"""GET /health (liveness, queue depth, running sequences) and /metrics (Prometheus text)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from opencodegen.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {"status": "ok", "model": state.settings.model_name, "queue_depth": state.scheduler.queue_depth,
            "running_sequences": state.metrics.running_sequences}


@router.get("/metrics")
async def prometheus(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)
