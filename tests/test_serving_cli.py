"""`opencodegen serve`: argument errors are one clear line; the real command serves a model directory."""

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from generation_helpers import make_model_dir
from opencodegen.cli import main


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", str(tmp_path), "--max-batch", "0"])
    assert exit_info.value.code == 2
    assert "argument --max-batch: must be an integer >= 1, not '0'" in capsys.readouterr().err


def test_a_non_loopback_address_needs_a_key_or_an_explicit_opt_out(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENCODEGEN_API_KEY", raising=False)
    assert main(["serve", "--model", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to serve on 0.0.0.0 without --api-key") and "--insecure-no-key" in err
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(tmp_path), "--session-ttl", "0"])
    assert "argument --session-ttl: must be a number > 0, not '0'" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_on_loopback(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    port = free_port()
    command = [sys.executable, "-m", "opencodegen.cli", "serve", "--model", str(model_dir), "--port", str(port),
               "--api-key", "k", "--max-batch", "2"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                health = httpx.get(url + "/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health.json()["model"] == "model"
        headers = {"Authorization": "Bearer k"}
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}, headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "model"
        assert httpx.post(url + "/v1/completions", json={"prompt": "x"}, timeout=30).status_code == 401
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    assert server.returncode == 0
