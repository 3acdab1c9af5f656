"""Request bodies of the HTTP API (pydantic, strict), their checks, and OpenAI-shaped errors.

Every client mistake becomes an :class:`APIError`, answered as
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status, as OpenAI does.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: OpenAI accepts at most this many stop sequences.
MAX_STOPS = 4
#: Largest `logprobs` (alternatives per token) we return.
MAX_LOGPROBS = 20


class APIError(Exception):
    """An error answered to the client as OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class SamplingFields(_Strict):
    """The sampling fields /v1/completions and /v1/chat/completions share, with their common checks.

    `top_k` and `ignore_eos` are the extra fields vLLM accepts (top_k -1 or 0: off).
    """

    model: str | None = None
    max_tokens: int | None = Field(default=16, ge=0)
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    n: int | None = Field(default=1, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(1 << 63), lt=1 << 64)
    user: str | None = None
    presence_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    ignore_eos: bool | None = False
    logit_bias: dict[str, float] | None = None  # accepted only empty

    def check(self) -> None:
        """Rules across fields, and the OpenAI fields we accept only at their neutral value."""
        stops = self.stop_list
        if len(stops) > MAX_STOPS:
            raise APIError(400, f"at most {MAX_STOPS} stop sequences are allowed, got {len(stops)}", param="stop")
        if any(not s for s in stops):
            raise APIError(400, "stop sequences must be non-empty strings", param="stop")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")
        for name, used in self.unsupported().items():
            if used:
                raise APIError(400, f"{name} is not supported by this server (leave it unset)", param=name,
                               code="unsupported_parameter")

    def unsupported(self) -> dict[str, bool]:
        """Known OpenAI fields set to a value this server does not implement."""
        return {"logit_bias": bool(self.logit_bias)}

    @property
    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def sampling_top_k(self) -> int:
        """top_k as the engine takes it (0: off)."""
        return max(self.top_k or 0, 0)


class CompletionRequest(SamplingFields):
    """POST /v1/completions (the legacy OpenAI completions API)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = False
    # Known OpenAI fields we accept only at their neutral value (anything else is a clear 400).
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None

    def check(self) -> None:
        if isinstance(self.prompt, list) and not self.prompt:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        super().check()

    def unsupported(self) -> dict[str, bool]:
        return {"best_of": self.best_of not in (None, self.n), **super().unsupported(), "suffix": self.suffix is not None}

    def prompt_items(self) -> list[str | list[int]]:
        """The prompts: strings or token-id lists, one per completion group."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TextPart(_Strict):
    """A text part of a message's content (OpenAI's list form)."""

    type: Literal["text"]
    text: str = Field(max_length=200_000)


class ChatMessage(_Strict):
    """One message of a conversation: a user's instruction or the assistant's code of a turn."""

    role: str
    content: str | list[TextPart] = Field(max_length=200_000)
    name: str | None = None

    @property
    def text(self) -> str:
        """The content as one string (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions: a conversation in CodeGen's multi-turn program-synthesis format.

    `execute` (an extension): run the turns' code in a sandboxed interpreter and return what it
    printed with each choice.
    """

    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False  # accepted only false
    execute: bool | None = False

    def unsupported(self) -> dict[str, bool]:
        return {**super().unsupported(), "logprobs": bool(self.logprobs)}

    def check(self) -> None:
        super().check()
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise APIError(400, "give max_completion_tokens or max_tokens, not both", param="max_completion_tokens")

    @property
    def token_limit(self) -> int | None:
        """The completion budget the client asked for (None: what the context leaves)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TokenizeRequest(_Strict):
    """POST /tokenize (vLLM's): a prompt, or a conversation rendered as /v1/chat/completions does."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=1000)
    add_special_tokens: bool = True  # CodeGen's tokenizer adds none either way
    add_generation_prompt: bool = True  # a conversation always ends with the next turn's comment
    return_token_strs: bool | None = False

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise APIError(400, "give either prompt or messages", param="prompt")


class DetokenizeRequest(_Strict):
    """POST /detokenize (vLLM's): token ids back to text."""

    model: str | None = None
    tokens: list[int] = Field(max_length=1 << 20)


class SessionCreate(_Strict):
    """POST /v1/sessions: sampling settings of the session's turns."""

    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=128, ge=1)
    seed: int | None = Field(default=None, ge=0, lt=1 << 63)


class TurnCreate(_Strict):
    """POST /v1/sessions/{id}/turns: an instruction; `code` skips the model."""

    instruction: str = Field(min_length=1, max_length=20_000)
    code: str | None = Field(default=None, max_length=200_000)


class TurnEdit(_Strict):
    """PUT /v1/sessions/{id}/turns/{index}: the turn's new code."""

    code: str = Field(max_length=200_000)


def parse_body(raw: bytes, model: type[BaseModel]) -> Any:
    """Decode a JSON body into `model`, turning every problem into a 400 APIError.

    (The body's size is bounded before: see `opencodegen.serving.guard`.)
    """
    try:
        data = json.loads(raw) if raw.strip() else None
    except RecursionError:
        raise APIError(400, "We could not parse the JSON body of your request (it is nested too deeply).",
                       code="invalid_json") from None
    except ValueError as exc:  # bad JSON, bad UTF-8, or an integer with too many digits
        raise APIError(400, f"We could not parse the JSON body of your request ({exc}).", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


# What union-typed fields accept (pydantic would report one error per member of the union).
_EXPECTED = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": f"a string or a list of at most {MAX_STOPS} strings",
}


def validation_error(exc: ValidationError) -> APIError:
    """The first pydantic error as an OpenAI-style 400."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    param = loc[0] if loc else None
    if param in _EXPECTED and err["type"] not in ("extra_forbidden", "missing"):
        return APIError(400, f"Invalid value for {param}: expected {_EXPECTED[param]}", param=param,
                        code="invalid_value")
    if "content" in loc[:4] and err["type"] != "missing":  # a message's content (a union: one error per member)
        where = ".".join(loc[: loc.index("content") + 1])
        return APIError(400, f"Invalid value for {where}: expected a string or a list of text parts "
                        '({"type": "text", "text": ...})', param=param, code="invalid_value")
    if err["type"] == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {'.'.join(loc)}", param=param,
                        code="unknown_parameter")
    if err["type"] == "missing":
        return APIError(400, f"Missing required parameter: {'.'.join(loc)}", param=param, code="missing_parameter")
    message = str(err["msg"]).removeprefix("Value error, ")
    where = f"{'.'.join(loc)}: " if loc else ""
    return APIError(400, f"Invalid value for {where}{message}" if loc else message, param=param,
                    code="invalid_value")

