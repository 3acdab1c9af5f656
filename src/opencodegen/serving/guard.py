"""What the server checks before any route runs: browser-safe requests (a Host allow-list,
JSON-only state changes), bounded body reading, security headers, and a header time-out.

`HTTPGuard` is the outermost ASGI middleware: it refuses a request whose Host is not allowed
(DNS rebinding), a POST/PUT/PATCH that is not `application/json` (a cross-site page can send
text/plain or form bodies without a CORS preflight), and a body over the limit, by its
Content-Length before reading anything or, for chunked bodies, as soon as the running count
passes it; a body that does not arrive within the body time-out gets 408.

`header_timeout_protocol` makes uvicorn's HTTP/1.1 protocol close a connection whose request
headers are not complete within a time-out (slowloris), counted from the connection's start
or the end of its previous response, and bounds what it drains (and discards) of a body left
unread by a refusal.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from typing import Any

import h11
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from opencodegen.serving.protocol import APIError

#: Request bodies larger than this are refused before they are read.
MAX_BODY_BYTES = 4 << 20
#: Seconds a request body may take to arrive in full.
BODY_TIMEOUT_S = 30.0
#: Seconds a request's headers may take to arrive in full.
HEADER_TIMEOUT_S = 15.0
#: After a refusal that left the body unread: bytes and seconds of it drained (and discarded)
#: before the connection is closed, so a client that sends its body before reading still gets
#: the answer.
DRAIN_BYTES, DRAIN_S = 16 << 20, 30.0
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH"})
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def host_name(header: str) -> str:
    """The host of a Host header, without the port and brackets, lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        header = header.rsplit(":", 1)[0]
    return header.rstrip(".")


def allowed_host_names(extra: Iterable[str] = ()) -> frozenset[str]:
    """The loopback names plus `extra` (host names or addresses; "*" allows any Host)."""
    names = set(LOOPBACK_HOSTS)
    for name in extra:
        name = host_name(name)
        try:
            name = str(ipaddress.ip_address(name))
        except ValueError:
            pass
        names.add(name)
    return frozenset(names)


class HTTPGuard:
    """ASGI middleware: Host allow-list, JSON-only state changes, bounded bodies, security headers."""

    def __init__(self, app: Any, *, allowed_hosts: Iterable[str], max_body_bytes: int = MAX_BODY_BYTES,
                 body_timeout: float = BODY_TIMEOUT_S):
        self.app = app
        self.allowed = allowed_host_names(allowed_hosts)
        self.max_body_bytes, self.body_timeout = max_body_bytes, body_timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        try:
            receive = await self._check(scope, receive)
        except APIError as exc:
            await JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)(scope, receive, secured_send)
            return
        await self.app(scope, receive, secured_send)

    async def _check(self, scope: dict[str, Any], receive: Any) -> Any:
        """Refuse the request (APIError) or return the receive channel the app should use."""
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key, value)
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if "*" not in self.allowed and host not in self.allowed:
            raise APIError(421, f"Host {host!r} is not served here; to serve it, start the server with "
                           f"--allowed-host {host or 'NAME'}.", code="host_not_allowed")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise APIError(413, f"request body over {self.max_body_bytes} bytes", code="body_too_large")
        if scope["method"] not in STATE_CHANGING:
            return receive
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            raise APIError(415, f"Content-Type must be application/json, not {media_type.decode('latin-1')!r} "
                           "(send the body as JSON with 'Content-Type: application/json').",
                           code="unsupported_media_type")
        body = await self._read_body(receive)
        return _replay(body, receive)

    async def _read_body(self, receive: Any) -> bytes:
        """The whole body, read under the size cap and the time-out."""
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                raise APIError(408, f"the request body did not arrive within {self.body_timeout:g} s",
                               code="request_timeout") from None
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise APIError(413, f"request body over {self.max_body_bytes} bytes", code="body_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A receive channel that gives `body` once, then passes through (disconnect events)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replay


def header_timeout_protocol(seconds: float = HEADER_TIMEOUT_S) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request headers take over `seconds`,
    and bounding what is drained of a body the app answered without reading (a refusal)."""

    class HeaderTimeoutProtocol(H11Protocol):
        header_timeout = seconds
        _header_timer: asyncio.TimerHandle | None = None
        _drain_timer: asyncio.TimerHandle | None = None
        _drained = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

        def data_received(self, data: bytes) -> None:
            draining = self._drain_timer is not None
            super().data_received(data)
            if draining:  # uvicorn discards this body; the client reads the answer once it sent it all
                self._drained += len(data)
                if self._drained > DRAIN_BYTES:
                    self._close()
                elif self.conn.their_state is not h11.SEND_BODY:  # drained: the connection goes on
                    self._drain_timer.cancel()
                    self._drain_timer, self._drained = None, 0
                    if self.conn.their_state is h11.IDLE:
                        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)
            elif self.conn.their_state is not h11.IDLE and self._header_timer is not None:
                self._header_timer.cancel()  # the headers are complete
                self._header_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.SEND_BODY:  # answered before the body was read
                self._drain_timer = self.loop.call_later(DRAIN_S, self._close)
            elif self.conn.their_state is h11.IDLE:
                self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in (self._header_timer, self._drain_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE:
                self._close()

        def _close(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
