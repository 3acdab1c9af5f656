"""POST /tokenize and /detokenize (vLLM's extension): text or chat messages to token ids and back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from opencodegen.serving.chat import conversation, conversation_prompt
from opencodegen.serving.protocol import APIError, DetokenizeRequest, TokenizeRequest, parse_body
from opencodegen.serving.routes.common import ServerSettings, check_model, off_loop
from opencodegen.tokenizer import CodeGenTokenizer

router = APIRouter()


def read_tokenize(raw: bytes, tokenizer: CodeGenTokenizer, settings: ServerSettings) -> dict[str, Any]:
    body = parse_body(raw, TokenizeRequest)
    check_model(body.model, settings)
    body.check()
    if body.messages is not None:
        text = conversation_prompt(*conversation(body.messages))
    else:
        text = body.prompt
    ids = tokenizer.encode(text)
    reply: dict[str, Any] = {"count": len(ids), "max_model_len": settings.limits.context, "tokens": ids}
    if body.return_token_strs:
        reply["token_strs"] = [tokenizer.id_to_token(t) for t in ids]
    return reply


def read_detokenize(raw: bytes, tokenizer: CodeGenTokenizer, settings: ServerSettings) -> dict[str, Any]:
    body = parse_body(raw, DetokenizeRequest)
    check_model(body.model, settings)
    bad = next((t for t in body.tokens if not 0 <= t < len(tokenizer)), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the vocabulary (0 … {len(tokenizer) - 1})",
                       param="tokens", code="invalid_value")
    return {"prompt": tokenizer.decode(body.tokens)}


@router.post("/tokenize")
async def tokenize(request: Request) -> dict[str, Any]:
    state = request.app.state
    return await off_loop(request, read_tokenize, await request.body(), state.tokenizer, state.settings)


@router.post("/detokenize")
async def detokenize(request: Request) -> dict[str, Any]:
    state = request.app.state
    return await off_loop(request, read_detokenize, await request.body(), state.tokenizer, state.settings)
