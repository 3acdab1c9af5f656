"""The session API behind the web page over raw HTTP: streamed turns, code given by hand,
edit (later turns re-run), retry, undo, export of a runnable program."""

import json
import subprocess
import sys
import time

import httpx
import pytest

from execution_helpers import processes_with
from generation_helpers import one_thread  # noqa: F401 (fixture)
from serving_helpers import serve, sse_data, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    loaded = tiny_model(tmp_path_factory.mktemp("tiny"), favour="value =")
    with serve(*loaded) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def turn(http, path: str, body=None) -> list[dict]:
    with http.stream("POST", path, json={} if body is None else body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return sse_data(response)


def test_a_session_from_first_turn_to_export(http, tmp_path):
    session = http.post("/v1/sessions", json={"max_tokens": 40, "seed": 3})
    assert session.status_code == 201
    sid = session.json()["id"]
    assert session.json()["turns"] == [] and session.json()["program"].startswith("# Import libraries.")

    events = turn(http, f"/v1/sessions/{sid}/turns", {"instruction": "Define a value."})
    deltas = [e["text"] for e in events if e["type"] == "delta"]
    [code] = [e["code"] for e in events if e["type"] == "code"]
    assert len(deltas) >= 5 and "".join(deltas) == code  # the model's code, streamed as it was written
    state = events[-1]["session"]
    assert events[-1]["type"] == "turn" and state["turns"][0]["code"] == code
    assert state["turns"][0]["status"] in ("ok", "error") and state["turns"][0]["instruction"] == "Define a value."

    events = turn(http, f"/v1/sessions/{sid}/turns", {"instruction": "Double it.", "code": "print(x * 2)\nx * 21"})
    assert [e["type"] for e in events] == ["code", "turn"]
    second = events[-1]["session"]["turns"][1]
    assert second["status"] == "error" and "NameError" in second["error"]  # turn 1 defined no x

    state = http.put(f"/v1/sessions/{sid}/turns/0", json={"code": "x = 2"}).json()
    assert [t["status"] for t in state["turns"]] == ["ok", "ok"]  # the later turn ran again, on the new state
    assert (state["turns"][1]["stdout"], state["turns"][1]["value"]) == ("4\n", "42")

    events = turn(http, f"/v1/sessions/{sid}/turns/1/retry")
    assert any(e["type"] == "delta" for e in events)
    state = events[-1]["session"]
    assert len(state["turns"]) == 2 and state["turns"][1]["instruction"] == "Double it."

    state = http.post(f"/v1/sessions/{sid}/undo", json={}).json()
    assert len(state["turns"]) == 1
    assert http.get(f"/v1/sessions/{sid}").json() == state

    export = http.get(f"/v1/sessions/{sid}/export")
    assert export.headers["content-type"].startswith("text/x-python")
    assert export.headers["content-disposition"] == f'attachment; filename="session-{sid}.py"'
    assert export.text == state["program"] and export.text.endswith("# Define a value.\nx = 2\n\n")
    program = tmp_path / "program.py"
    program.write_text(export.text + "print(x)\n")
    ran = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "2\n"), ran.stderr
    assert http.delete(f"/v1/sessions/{sid}").status_code == 200


def test_a_full_store_is_429_and_never_evicts_a_live_session(tmp_path_factory):
    loaded = tiny_model(tmp_path_factory.mktemp("tiny"))
    with serve(*loaded, max_sessions=2) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        first, second = (http.post("/v1/sessions", json={}).json()["id"] for _ in range(2))
        refused = http.post("/v1/sessions", json={})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_sessions"
        assert "delete a session" in refused.json()["error"]["message"] and refused.headers["retry-after"]
        assert {http.get(f"/v1/sessions/{s}").status_code for s in (first, second)} == {200}
        http.delete(f"/v1/sessions/{first}")
        third = http.post("/v1/sessions", json={}).json()["id"]
        assert json.loads(http.get(f"/v1/sessions/{third}").text)["turns"] == []


def test_a_turn_leaves_no_process_running(http):
    sid = http.post("/v1/sessions", json={}).json()["id"]
    marker = f"{time.time_ns() % 10**9 + 10**9}"
    code = f"import os, subprocess\np = subprocess.Popen(['sleep', '{marker}'])\nif os.fork() == 0:\n    while True:\n        pass\np.pid"
    events = turn(http, f"/v1/sessions/{sid}/turns", {"instruction": "Start a sleeper and a spinner.", "code": code})
    assert events[-1]["session"]["turns"][0]["status"] == "ok", events[-1]
    assert not processes_with(marker)  # killed before the turn answered
    assert http.get("/health").json()["status"] == "ok"
    assert http.delete(f"/v1/sessions/{sid}").status_code == 200
