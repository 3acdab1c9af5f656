"""Every client error over raw HTTP: status, OpenAI's error JSON shape, the offending parameter;
the API key; the bounded queue (429 + Retry-After) and a disconnect freeing its slot."""

import json
import threading
import time

import httpx
import pytest

from generation_helpers import one_thread  # noqa: F401 (fixture)
from serving_helpers import MODEL_NAME, serve, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_BATCH, TOKENS_LIMIT = 4, 64


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def http(loaded):
    with serve(*loaded, max_batch=MAX_BATCH, max_tokens_limit=TOKENS_LIMIT) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client


def assert_error(response: httpx.Response, status: int, param=None, code=None, says: str = ""):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert error["message"] and says.lower() in error["message"].lower(), error
    assert error["param"] == param and (code is None or error["code"] == code), error
    return error


OK = {"prompt": "x", "max_tokens": 2}
BAD_REQUESTS = [
    # (body, param, code, words of the message)
    ({**OK, "temprature": 0.5}, "temprature", "unknown_parameter", "Unrecognized request argument"),
    ({"max_tokens": 2}, "prompt", "missing_parameter", "Missing required parameter"),
    ({**OK, "temperature": 2.5}, "temperature", "invalid_value", "less than or equal to 2"),
    ({**OK, "temperature": -0.1}, "temperature", "invalid_value", "greater than or equal to 0"),
    ({**OK, "temperature": "hot"}, "temperature", "invalid_value", "temperature"),
    ({**OK, "top_p": 0}, "top_p", "invalid_value", "greater than 0"),
    ({**OK, "top_p": 1.5}, "top_p", "invalid_value", "less than or equal to 1"),
    ({**OK, "n": 0}, "n", "invalid_value", "greater than or equal to 1"),
    ({**OK, "n": MAX_BATCH + 1}, "n", None, "too large"),
    ({**OK, "n": True}, "n", "invalid_value", "n"),
    ({**OK, "logprobs": 21}, "logprobs", "invalid_value", "less than or equal to 20"),
    ({**OK, "max_tokens": -1}, "max_tokens", "invalid_value", "greater than or equal to 0"),
    ({**OK, "max_tokens": TOKENS_LIMIT + 1}, "max_tokens", "max_tokens_exceeded", "over this server's limit"),
    ({**OK, "stop": ["a", "b", "c", "d", "e"]}, "stop", None, "at most 4"),
    ({**OK, "stop": ""}, "stop", None, "non-empty"),
    ({**OK, "stop": [1]}, "stop", "invalid_value", "stop"),
    ({**OK, "prompt": "x" * 3000}, "prompt", "context_length_exceeded", "maximum context length is 512"),
    ({**OK, "prompt": "a b c d", "max_tokens": TOKENS_LIMIT}, None, None, None),  # fits: not an error
    ({**OK, "prompt": []}, "prompt", None, "empty"),
    ({**OK, "prompt": [1, 99999]}, "prompt", None, "outside the vocabulary"),
    ({**OK, "prompt": {"text": "x"}}, "prompt", "invalid_value", "prompt"),
    ({**OK, "best_of": 3}, "best_of", "unsupported_parameter", "not supported"),
    ({**OK, "logit_bias": {"1": 5}}, "logit_bias", "unsupported_parameter", "not supported"),
    ({**OK, "presence_penalty": 2.5}, "presence_penalty", None, "presence_penalty"),
    ({**OK, "suffix": "}"}, "suffix", "unsupported_parameter", "not supported"),
    ({**OK, "stream_options": {"include_usage": True}}, "stream_options", None, "only allowed when stream"),
    ({**OK, "stream": True, "stream_options": {"usage": True}}, "stream_options", "unknown_parameter", "usage"),
    ({**OK, "seed": 1.5}, "seed", "invalid_value", "seed"),
]


@pytest.mark.parametrize("body,param,code,says", BAD_REQUESTS)
def test_invalid_completion_requests_are_400_with_openai_errors(http, body, param, code, says):
    response = http.post("/v1/completions", json=body)
    if says is None:
        assert response.status_code == 200, response.text
        return
    error = assert_error(response, 400, param, code, says)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "content,says",
    [(b"{", "could not parse the JSON body"), (b"[1, 2]", "must be a JSON object"), (b"", "must be a JSON object"),
     (b"\xff\xfe", "could not parse"), (b'{"prompt": NaN', "could not parse")],
)
def test_malformed_bodies_are_400(http, content, says):
    response = http.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    assert_error(response, 400, None, "invalid_json", says)


def test_unknown_model_is_404_and_oversized_body_is_413(http):
    assert_error(http.post("/v1/completions", json={**OK, "model": "gpt-4"}), 404, "model", "model_not_found", "gpt-4")
    assert http.post("/v1/completions", json={**OK, "model": MODEL_NAME}).status_code == 200
    assert_error(http.get("/v1/models/gpt-4"), 404, "model", "model_not_found")
    huge = json.dumps({"prompt": "x" * (5 << 20)}).encode()
    assert_error(http.post("/v1/completions", content=huge), 413, None, "body_too_large")


def test_unknown_routes_and_methods_answer_in_the_same_shape(http):
    assert_error(http.get("/v1/nothing"), 404, code="not_found")
    assert_error(http.get("/v1/completions"), 405, code="method_not_allowed")


def test_session_errors(http):
    assert_error(http.get("/v1/sessions/nope"), 404, "session_id", "session_not_found")
    assert_error(http.post("/v1/sessions", json={"temperature": 5}), 400, "temperature")
    assert_error(http.post("/v1/sessions", json={"max_tokens": 512}), 400, "max_tokens", says="below the context")
    sid = http.post("/v1/sessions", json={"max_tokens": 8}).json()["id"]
    assert_error(http.post(f"/v1/sessions/{sid}/undo", json={}), 400, says="nothing to undo")
    assert_error(http.put(f"/v1/sessions/{sid}/turns/0", json={"code": "x = 1"}), 404, "index", "turn_not_found")
    assert_error(http.put(f"/v1/sessions/{sid}/turns/zero", json={"code": "x = 1"}), 400, "index")
    assert_error(http.put(f"/v1/sessions/{sid}/turns/0", json={}), 400, "code", "missing_parameter")
    assert_error(http.post(f"/v1/sessions/{sid}/turns", json={"instruction": ""}), 400, "instruction")
    assert_error(http.post(f"/v1/sessions/{sid}/turns/3/retry", json={}), 404, "index", "turn_not_found", "no turn 3")
    assert http.delete(f"/v1/sessions/{sid}").json() == {"id": sid, "deleted": True}
    assert_error(http.get(f"/v1/sessions/{sid}"), 404, "session_id")


def test_api_key(loaded):
    with serve(*loaded, api_key="s3cret") as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            response = http.post("/v1/completions", json=OK, headers=headers)
            assert_error(response, 401, None, "invalid_api_key", "API key")
            assert response.headers["www-authenticate"] == "Bearer"
        assert_error(http.get("/v1/models"), 401, code="invalid_api_key")
        assert_error(http.get("/metrics"), 401, code="invalid_api_key")
        good = {"Authorization": "Bearer s3cret"}
        assert http.post("/v1/completions", json=OK, headers=good).status_code == 200
        assert http.get("/health").status_code == 200  # liveness and the page stay open
        assert http.get("/").status_code == 200


def test_full_queue_is_429_and_a_disconnect_frees_the_slot(loaded):
    """Deterministic by construction: the scheduler is held (its step hook waits on a gate the test
    opens) from the long request's first step until the server has seen the client hang up."""
    with serve(*loaded, max_batch=1, max_queue=1) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        scheduler = server.app.state.scheduler
        gate, cancelled = threading.Event(), threading.Event()
        cancel = scheduler.cancel

        def observed_cancel(job):
            cancelled.set()
            cancel(job)

        scheduler.cancel, scheduler.step_hook = observed_cancel, gate.wait
        long = {"prompt": "x", "max_tokens": 400, "temperature": 1.0, "seed": 0, "stream": True}
        queued: dict = {}
        try:
            with http.stream("POST", "/v1/completions", json=long) as stream:
                lines = stream.iter_lines()
                first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
                assert first["choices"][0]["finish_reason"] is None  # it runs and holds the only slot

                def wait_in_queue():
                    queued["response"] = httpx.post(server.url + "/v1/completions", json={**OK, "max_tokens": 3},
                                                    timeout=60)

                waiter = threading.Thread(target=wait_in_queue)
                waiter.start()
                deadline = time.monotonic() + 30
                while http.get("/health").json()["queue_depth"] != 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                rejected = http.post("/v1/completions", json=OK)
                assert_error(rejected, 429, None, "queue_full", "busy")
                assert rejected.headers["retry-after"] == "1"
            # the stream is closed: once the server saw it, the long request leaves and the queued one runs
            assert cancelled.wait(60)
        finally:
            gate.set()
        waiter.join(60)
        assert queued["response"].status_code == 200
        metrics = http.get("/metrics").text
        generated = next(float(line.split()[1]) for line in metrics.splitlines()
                         if line.startswith("opencodegen_generation_tokens_total"))
        assert generated < 400  # the abandoned request did not run to its end


def test_a_client_that_hangs_up_is_cancelled(loaded):
    long = {"prompt": "x", "max_tokens": 500, "temperature": 1.0, "seed": 1}
    with serve(*loaded) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        with pytest.raises(httpx.TimeoutException):
            http.post("/v1/completions", json=long, timeout=0.1)
        deadline = time.monotonic() + 30
        while 'opencodegen_requests_total{outcome="cancelled"} 1' not in http.get("/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        while http.get("/health").json()["running_sequences"]:  # its rows leave the batch
            assert time.monotonic() < deadline
            time.sleep(0.02)
