"""The server under attack, over raw HTTP: cross-site and rebinding requests, oversized and
trickled bodies, slowloris headers, hostile JSON, a request that would starve the others, and
session floods. Each test asserts outcomes (what was refused, what the server read, in what
order requests finished), never wall-clock bounds, and that /health answers meanwhile."""

import json
import socket
import threading
import time

import httpx
import pytest

from generation_helpers import one_thread  # noqa: F401 (fixture)
from opencodegen.serving.app import create_app
from opencodegen.serving.background import BackgroundServer
from opencodegen.serving.guard import host_name
from opencodegen.serving.protocol import APIError, SessionCreate
from opencodegen.serving.sessions import SessionStore
from opencodegen.synthesis.interpreter import MEMORY_MB
from serving_helpers import MODEL_NAME, serve, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

LIMIT = 256 << 10  # the body limit of these servers
OK = {"prompt": "x", "max_tokens": 2}
IMPATIENT_S = 5.0


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


class CountingApp:
    """Wraps an ASGI app and counts the request-body bytes it took from the server."""

    def __init__(self, app):
        self.app, self.body_bytes = app, 0

    async def __call__(self, scope, receive, send):
        async def counted():
            message = await receive()
            self.body_bytes += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@pytest.fixture(scope="module")
def counted(loaded):
    app = CountingApp(create_app(*loaded, model_name=MODEL_NAME, max_body_bytes=LIMIT, allowed_hosts=["my.box"]))
    with BackgroundServer(app) as server:
        yield server, app


@pytest.fixture(scope="module")
def impatient(loaded):
    """Short header and body time-outs (short for a test, long for a request sent in one piece)."""
    app = create_app(*loaded, model_name=MODEL_NAME, body_timeout=IMPATIENT_S)
    with BackgroundServer(app, header_timeout=IMPATIENT_S) as server:
        yield server


def healthy(server) -> bool:
    return httpx.get(server.url + "/health", timeout=60).json()["status"] == "ok"


def raw_connection(server) -> socket.socket:
    sock = socket.create_connection((server.host, server.port))
    sock.settimeout(60)  # a guard against hanging for ever, not a measurement
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = int(next(line.split(":", 1)[1] for line in lines if line.lower().startswith("content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(body[:length])


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


# ----------------------------------------------------------------------------------- browsers


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/sessions"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_state_changes_need_a_json_content_type(counted, path, content_type):
    server, _ = counted
    headers = {} if content_type is None else {"content-type": content_type}
    response = httpx.post(server.url + path, content=json.dumps(OK), headers=headers, timeout=60)
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert "application/json" in response.json()["error"]["message"]
    assert len(server.app.app.state.sessions) == 0  # nothing was created
    ok = httpx.post(server.url + "/v1/completions", content=json.dumps(OK),
                    headers={"content-type": "application/json; charset=utf-8"}, timeout=60)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil",
                                  "", "[::2]:80", "10.0.0.1"])
def test_a_foreign_host_header_is_refused(counted, host):
    server, _ = counted
    for method, path in (("GET", "/health"), ("GET", "/"), ("POST", "/v1/completions")):
        response = httpx.request(method, server.url + path, json=OK, headers={"host": host}, timeout=60)
        assert response.status_code == 421, response.text
        assert response.json()["error"]["code"] == "host_not_allowed" and "--allowed-host" in response.text


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8000", "127.0.0.1", "[::1]:8000", "my.box", "my.box:443"])
def test_loopback_names_and_allowed_hosts_are_served(counted, host):
    server, _ = counted
    assert httpx.get(server.url + "/health", headers={"host": host}, timeout=60).status_code == 200
    assert host_name(host) in {"localhost", "127.0.0.1", "::1", "my.box"}


def test_any_host_only_when_asked(loaded):
    with BackgroundServer(create_app(*loaded, allowed_hosts=["*"])) as server:
        assert httpx.get(server.url + "/health", headers={"host": "anything.example"}, timeout=60).status_code == 200


def test_the_page_forbids_framing_sniffing_and_foreign_scripts(counted):
    server, _ = counted
    for path in ("/", "/static/app.js", "/v1/models"):
        headers = httpx.get(server.url + path, timeout=60).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


# ----------------------------------------------------------------------------------- bodies


def test_a_declared_300_mb_body_is_refused_before_any_of_it_is_read(counted):
    server, app = counted
    before = app.body_bytes
    with raw_connection(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 314572800\r\n\r\n" + b" " * 4096)
        status, body = read_response(sock)
        assert healthy(server)  # while that connection is open
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    assert app.body_bytes == before  # the app took none of it


def test_a_chunked_body_is_cut_as_soon_as_it_passes_the_limit(counted):
    server, app = counted
    before, chunk = app.body_bytes, b"x" * (64 << 10)
    with raw_connection(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(LIMIT // len(chunk) + 1):  # one chunk past the limit, and no end
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, body = read_response(sock)
        assert healthy(server)
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    assert app.body_bytes - before <= LIMIT + len(chunk)


def test_a_trickled_body_gets_408_after_the_body_timeout(impatient):
    server = impatient
    with raw_connection(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        assert healthy(server)
        status, body = read_response(sock)  # never sends the other 99 bytes
    assert (status, body["error"]["code"]) == (408, "request_timeout")


def test_slowloris_connections_are_closed_after_the_header_timeout(impatient):
    server = impatient
    sockets = [raw_connection(server) for _ in range(50)]
    try:
        for i, sock in enumerate(sockets):  # headers that never end
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (b"X-a: b\r\n" if i % 2 else b""))
        assert healthy(server)
        assert all(closed_by_server(sock) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    with raw_connection(server) as sock:  # a complete request on a fresh connection still works
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200


NESTED = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_INT = b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/sessions"])
@pytest.mark.parametrize("content", [NESTED, HUGE_INT, b'{"seed": ' + b"9" * 4000 + b"}"], ids=["nested", "5000-digits", "4000-digits"])
def test_hostile_json_is_a_400(counted, path, content):
    server, _ = counted
    response = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"},
                          timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] in ("invalid_json", "invalid_value",
                                                                          "unknown_parameter", "missing_parameter")
    if content is not NESTED and content is not HUGE_INT:
        return
    assert error["code"] == "invalid_json", error
    assert healthy(server)


# ----------------------------------------------------------------------------------- fairness


def test_a_small_request_finishes_before_a_big_one_that_came_first(loaded):
    """Deterministic by construction: the scheduler is held (its step hook waits on a gate) until
    both requests are queued, and the order in which jobs finish is recorded by the scheduler."""
    with serve(*loaded, max_batch=4) as server:
        scheduler = server.app.state.scheduler
        gate, finished = threading.Event(), []
        scheduler.step_hook, scheduler.finish_hook = gate.wait, lambda job: finished.append(len(job.prompts))
        results: dict = {}

        def post(name, body):
            results[name] = httpx.post(server.url + "/v1/completions", json=body, timeout=600)

        big = threading.Thread(target=post, args=("big", {"prompt": [f"p{i}" for i in range(2000)], "max_tokens": 2}))
        small = threading.Thread(target=post, args=("small", {"prompt": "x", "max_tokens": 2}))
        try:
            big.start()
            wait_until(lambda: scheduler.queue_depth == 1)  # queued (the first steps may have run)
            small.start()
            wait_until(lambda: scheduler.queue_depth == 2)
            assert healthy(server)
        finally:
            gate.set()
        small.join(600)
        assert results["small"].status_code == 200
        assert healthy(server)
        big.join(600)
        assert results["big"].status_code == 200 and len(results["big"].json()["choices"]) == 2000
        assert finished == [1, 2000]  # the small one finished first


def wait_until(condition) -> None:
    deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_too_many_prompts_in_one_request_is_a_400(loaded):
    with serve(*loaded, max_prompts=3) as server:
        response = httpx.post(server.url + "/v1/completions", json={"prompt": ["a"] * 4, "max_tokens": 1}, timeout=60)
        assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_prompts"
        assert httpx.post(server.url + "/v1/completions", json={"prompt": ["a"] * 3, "max_tokens": 1},
                          timeout=60).status_code == 200


# ----------------------------------------------------------------------------------- sessions


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordedSession:
    """A stand-in for Session that records being closed (no interpreter is started)."""

    closed: list = []

    def close(self):
        RecordedSession.closed.append(self)


def store(**options) -> SessionStore:
    return SessionStore(None, None, 512, session_factory=RecordedSession, **options)


def test_idle_sessions_expire_by_the_injected_clock():
    clock = FakeClock()
    sessions = store(ttl_s=60, clock=clock)
    first = sessions.create(SessionCreate(), "a")
    clock.now += 30
    second = sessions.create(SessionCreate(), "a")
    clock.now += 31  # the first is idle for 61 s, the second for 31 s
    assert sessions.get(second.id) is second
    with pytest.raises(APIError) as gone:
        sessions.get(first.id)
    assert gone.value.status == 404 and first.session in RecordedSession.closed
    clock.now += 59
    assert sessions.expire() == [] and len(sessions) == 1  # `get` counted as use
    clock.now += 2
    assert sessions.expire() == [second.id] and len(sessions) == 0


def test_the_memory_budget_refuses_new_sessions_instead_of_evicting():
    sessions = store(memory_budget_mb=3 * MEMORY_MB, max_sessions=16, max_per_client=16)
    live = [sessions.create(SessionCreate(), f"client{i}") for i in range(3)]
    with pytest.raises(APIError) as full:
        sessions.create(SessionCreate(), "client9")
    error = full.value
    assert (error.status, error.code) == (429, "too_many_sessions") and error.headers["Retry-After"]
    assert f"a budget of {3 * MEMORY_MB} MiB" in error.message and "delete a session" in error.message
    assert all(sessions.get(e.id) is e for e in live)  # nobody's live session was evicted
    sessions.delete(live[0].id)
    sessions.create(SessionCreate(), "client9")


def test_one_client_holds_a_few_sessions_at_most():
    sessions = store(max_per_client=2)
    for _ in range(2):
        sessions.create(SessionCreate(), "10.0.0.5")
    with pytest.raises(APIError) as capped:
        sessions.create(SessionCreate(), "10.0.0.5")
    assert capped.value.status == 429 and "You hold 2 sessions" in capped.value.message
    sessions.create(SessionCreate(), "10.0.0.6")  # another client is not affected


def test_session_flood_over_http_is_429_and_health_stays_up(loaded):
    with serve(*loaded, max_sessions_per_client=2) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        statuses = [http.post("/v1/sessions", json={}).status_code for _ in range(4)]
        assert statuses == [201, 201, 429, 429]
        assert healthy(server)
