"""/v1/sessions: the multi-turn synthesis sessions of the web page (create, read, delete, add,
retry and edit turns, undo, export); a turn's progress comes back as server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from opencodegen.serving.protocol import APIError, SessionCreate, TurnCreate, TurnEdit, parse_body
from opencodegen.serving.routes.common import SSE_HEADERS, client_address
from opencodegen.serving.scheduler import QueueFull, ShuttingDown

log = logging.getLogger(__name__)

router = APIRouter()


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


@router.post("/v1/sessions", status_code=201)
async def create_session(request: Request) -> dict[str, Any]:
    raw = await request.body()
    entry = request.app.state.sessions.create(parse_body(raw or b"{}", SessionCreate), client_address(request))
    return await entry.call(entry.state)


@router.get("/v1/sessions/{session_id}")
async def get_session(session_id: str, request: Request) -> dict[str, Any]:
    entry = request.app.state.sessions.get(session_id)
    return await entry.call(entry.state)


@router.delete("/v1/sessions/{session_id}")
async def delete_session(session_id: str, request: Request) -> dict[str, Any]:
    request.app.state.sessions.delete(session_id)
    return {"id": session_id, "deleted": True}


@router.post("/v1/sessions/{session_id}/turns")
async def add_turn(session_id: str, request: Request) -> StreamingResponse:
    body = parse_body(await request.body(), TurnCreate)
    sessions = request.app.state.sessions
    entry = sessions.get(session_id)
    return session_stream(sessions.turn_events(entry, body.instruction, body.code, None))


@router.post("/v1/sessions/{session_id}/turns/{index}/retry")
async def retry_turn(session_id: str, index: int, request: Request) -> StreamingResponse:
    sessions = request.app.state.sessions
    entry = sessions.get(session_id)
    await entry.call(entry.turn, index)  # a 404 now rather than an error inside the stream
    return session_stream(sessions.turn_events(entry, None, None, index))


@router.put("/v1/sessions/{session_id}/turns/{index}")
async def edit_turn(session_id: str, index: int, request: Request) -> dict[str, Any]:
    body = parse_body(await request.body(), TurnEdit)
    entry = request.app.state.sessions.get(session_id)
    async with entry.lock:
        await entry.call(entry.turn, index)
        await entry.call(entry.session.edit_turn, index, body.code)
        return await entry.call(entry.state)


@router.post("/v1/sessions/{session_id}/undo")
async def undo(session_id: str, request: Request) -> dict[str, Any]:
    entry = request.app.state.sessions.get(session_id)
    async with entry.lock:
        await entry.call(entry.session.undo)
        return await entry.call(entry.state)


@router.get("/v1/sessions/{session_id}/export")
async def export(session_id: str, request: Request) -> Response:
    entry = request.app.state.sessions.get(session_id)
    program = await entry.call(entry.session.program)
    return Response(program, media_type="text/x-python; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="session-{session_id}.py"'})
