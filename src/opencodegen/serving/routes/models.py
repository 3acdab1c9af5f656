"""GET /v1/models and /v1/models/{name}: the one model this server serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from opencodegen.serving.protocol import APIError
from opencodegen.serving.routes.common import ServerSettings

router = APIRouter()


def model_card(settings: ServerSettings) -> dict[str, Any]:
    return {"id": settings.model_name, "object": "model", "created": settings.started, "owned_by": "opencodegen",
            "max_model_len": settings.limits.context}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(request.app.state.settings)]}


@router.get("/v1/models/{name:path}")
async def one_model(name: str, request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    if name != settings.model_name:
        raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
    return model_card(settings)
