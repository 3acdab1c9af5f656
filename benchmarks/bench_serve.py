"""Load test of `opencodegen serve` on 127.0.0.1, and continuous batching vs one request at a time.

    python benchmarks/bench_serve.py [--model DIR] [--clients 64] [--requests 200] [--streams 16]
    python benchmarks/bench_serve.py --attack [--attack-seconds 20]

Starts the server (a random `tiny` model unless --model is given) as a subprocess bound to
127.0.0.1 and measures, with an asyncio httpx client in this process:

1. load: `--clients` concurrent clients send `--requests` requests in all (a quarter of them
   streamed), then: responses by status (no 5xx allowed), lost responses (a request without a
   complete answer: no choices / finish_reason, or a stream without `data: [DONE]`), p50/p95
   latency and the aggregate generated tokens per second;
2. throughput: the same `--streams` seeded streaming requests run one at a time, then all at
   once. Seeded outputs do not depend on the batch, so both runs generate the same tokens and
   the ratio of their tokens/s is the gain of continuous batching (the issue asks >= 3x);
3. n samples: `--n-requests` seeded requests of n = `--n` samples each (one prompt's samples
   decoding together, the engine's n = 8 workload through the server), one at a time, then all
   at once: generated tokens/s of each.

With --attack it measures instead the latency of /health and of a small completion request,
first on an idle server, then while the attacks of issue 20 run together: slowloris connections,
a declared 300 MB body, a chunked body past the limit, a trickled body, a 3.9 MB prompt to
tokenize, a 2000-prompt request, hostile JSON, cross-site and foreign-Host requests, and a session
turn that leaves spinning processes behind.

Results are printed and written as JSON (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from records import Recorder, add_json_out

PROMPTS = [
    "def fibonacci(n):\n",
    "# Return the sum of a list of numbers.\ndef total(xs):\n",
    "import numpy as np\n\nx = np.arange(10)\n",
    "class Stack:\n    def __init__(self):\n",
    "for i in range(10):\n",
    "def is_prime(n: int) -> bool:\n    \"\"\"Return True if n is prime.\"\"\"\n",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_model(workdir: Path) -> Path:
    out = workdir / "tiny"
    if not (out / "config.json").exists():
        print(f"writing a random tiny model to {out} ...", flush=True)
        subprocess.run([sys.executable, "-m", "opencodegen.cli", "init", "--preset", "tiny", "--out", str(out)],
                       check=True)
    return out


def start_server(model: Path, port: int, max_batch: int, max_queue: int, threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "opencodegen.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--max-batch", str(max_batch), "--max-queue", str(max_queue),
               "--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k != "OPENCODEGEN_API_KEY"}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit("the server did not start within 120 s")
        time.sleep(0.2)


async def one_request(client: httpx.AsyncClient, body: dict) -> dict:
    """Send one completion request; report status, latency, tokens and whether the answer was whole."""
    started = time.perf_counter()
    try:
        if body.get("stream"):
            async with client.stream("POST", "/v1/completions", json=body) as response:
                done, finished, tokens = False, 0, 0
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                        finished += sum(c.get("finish_reason") is not None for c in chunk.get("choices", []))
                status = response.status_code
                whole = status != 200 or (done and finished == body.get("n", 1))
        else:
            response = await client.post("/v1/completions", json=body)
            status = response.status_code
            data = response.json()
            tokens = data.get("usage", {}).get("completion_tokens", 0) if status == 200 else 0
            whole = status != 200 or all(c.get("finish_reason") in ("stop", "length") for c in data["choices"])
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        return {"status": None, "latency": time.perf_counter() - started, "tokens": 0, "whole": False,
                "error": repr(exc)}
    return {"status": status, "latency": time.perf_counter() - started, "tokens": tokens, "whole": whole}


def request_body(i: int, max_tokens: int, stream: bool) -> dict:
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8, "top_p": 0.95,
            "seed": i, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def load_test(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    rng = random.Random(0)
    bodies = [request_body(i, rng.randint(max_tokens // 4, max_tokens), stream=i % 4 == 0) for i in range(requests)]
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    results: list[dict] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            results.append(await one_request(client, queue.get_nowait()))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies = sorted(r["latency"] for r in results)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients, "requests": requests, "answered": len(results), "statuses": statuses,
        "server_errors": sum(1 for r in results if r["status"] is None or r["status"] >= 500),
        "lost": requests - sum(1 for r in results if r["whole"] and r["status"] is not None),
        "p50_latency_s": statistics.median(latencies), "p95_latency_s": latencies[int(0.95 * (len(latencies) - 1))],
        "wall_s": wall, "generated_tokens": tokens, "tokens_per_s": tokens / wall,
    }


async def one_then_all(url: str, bodies: list[dict]) -> dict:
    """The requests one at a time, then all at once (after a warm-up): tokens and tokens/s of each way."""
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=len(bodies))) as client:
        await one_request(client, bodies[0])  # warm-up
        started = time.perf_counter()
        sequential = [await one_request(client, body) for body in bodies]
        sequential_s = time.perf_counter() - started
        started = time.perf_counter()
        concurrent = await asyncio.gather(*(one_request(client, body) for body in bodies))
        concurrent_s = time.perf_counter() - started
    assert all(r["status"] == 200 and r["whole"] for r in (*sequential, *concurrent)), (sequential, concurrent)
    seq_tokens, con_tokens = sum(r["tokens"] for r in sequential), sum(r["tokens"] for r in concurrent)
    return {
        "same_tokens": seq_tokens == con_tokens,
        "one_at_a_time_tokens_per_s": seq_tokens / sequential_s, "concurrent_tokens_per_s": con_tokens / concurrent_s,
    }


async def throughput(url: str, streams: int, max_tokens: int) -> dict:
    result = await one_then_all(url, [request_body(1000 + i, max_tokens, stream=True) for i in range(streams)])
    speedup = result["concurrent_tokens_per_s"] / result["one_at_a_time_tokens_per_s"]
    return {"streams": streams, "max_tokens": max_tokens, **result, "speedup": speedup}


async def n_samples(url: str, requests: int, n: int, max_tokens: int) -> dict:
    bodies = [{**request_body(2000 + i, max_tokens, stream=False), "n": n} for i in range(requests)]
    return {"requests": requests, "n": n, "max_tokens": max_tokens, **await one_then_all(url, bodies)}


# ----------------------------------------------------------------------------------- attack mode

ATTACK_PROBE_TIMEOUT_S = 30.0
SPINNER_TURN = "import os\nfor _ in range(2):\n    if os.fork() == 0:\n        while True:\n            pass\n'spun'"


async def raw_request(port: int, head: bytes, body_chunks: list[bytes], hold_s: float) -> None:
    """Send `head` and the chunks over a raw connection, keep it open `hold_s` seconds, close it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        writer.write(head)
        for chunk in body_chunks:
            writer.write(chunk)
            await writer.drain()
        await asyncio.wait_for(reader.read(65536), hold_s)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()


async def attacks(url: str, port: int, stop: asyncio.Event) -> None:
    """Every attack of issue 20 at once, over and over until `stop` is set."""
    json_head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"

    async def repeat(make) -> None:
        while not stop.is_set():
            await make()

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def post(content: bytes, headers: dict) -> None:
            try:
                await client.post("/v1/completions", content=content, headers=headers)
            except httpx.HTTPError:
                pass

        async def spinner_turn() -> None:
            created = await client.post("/v1/sessions", json={})
            if created.status_code != 201:
                await asyncio.sleep(0.5)
                return
            sid = created.json()["id"]
            await client.post(f"/v1/sessions/{sid}/turns", json={"instruction": "spin", "code": SPINNER_TURN})
            await client.delete(f"/v1/sessions/{sid}")

        json_type = {"content-type": "application/json"}
        jobs = [
            *(repeat(lambda: raw_request(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", [], 60))
              for _ in range(200)),  # slowloris
            repeat(lambda: raw_request(port, json_head + b"Content-Length: 314572800\r\n\r\n", [b" " * 65536], 5)),
            repeat(lambda: raw_request(port, json_head + b"Transfer-Encoding: chunked\r\n\r\n",
                                       [b"10000\r\n" + b"x" * 65536 + b"\r\n"] * 80, 5)),
            repeat(lambda: raw_request(port, json_head + b"Content-Length: 100\r\n\r\n{", [], 60)),  # trickle
            repeat(lambda: post(json.dumps({"prompt": "x " * 1_950_000, "max_tokens": 1}).encode(), json_type)),
            repeat(lambda: post(json.dumps({"prompt": [f"p{i}" for i in range(2000)], "max_tokens": 4}).encode(),
                                json_type)),
            repeat(lambda: post(b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", json_type)),
            repeat(lambda: post(b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", json_type)),
            repeat(lambda: post(b'{"prompt": "x"}', {"content-type": "text/plain"})),
            repeat(lambda: post(b'{"prompt": "x"}', {**json_type, "host": "evil.example"})),
            repeat(spinner_turn),
        ]
        await asyncio.gather(*jobs)


async def latencies(url: str, seconds: float) -> dict:
    """/health and a small completion, each polled in turn for `seconds`: their latencies (a request
    that fails or takes over ATTACK_PROBE_TIMEOUT_S counts as failed, at that time-out)."""
    measured: dict[str, list[float]] = {"health": [], "small_request": []}
    failed = dict.fromkeys(measured, 0)
    async with httpx.AsyncClient(base_url=url, timeout=ATTACK_PROBE_TIMEOUT_S) as client:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for name, probe in (("health", client.get("/health")),
                                ("small_request", client.post("/v1/completions", json={"prompt": "def f():",
                                                                                       "max_tokens": 2}))):
                started = time.perf_counter()
                try:
                    ok = (await probe).status_code == 200
                except httpx.HTTPError:
                    ok = False
                measured[name].append(time.perf_counter() - started)
                failed[name] += not ok
            await asyncio.sleep(0.05)

    def summary(values: list[float], failures: int) -> dict:
        values = sorted(values)
        return {"count": len(values), "failed": failures, "p50_s": statistics.median(values),
                "p95_s": values[int(0.95 * (len(values) - 1))], "max_s": values[-1]}

    return {name: summary(values, failed[name]) for name, values in measured.items()}


async def attack_mode(url: str, port: int, seconds: float) -> dict:
    idle = await latencies(url, seconds / 4)
    stop = asyncio.Event()
    attacking = asyncio.ensure_future(attacks(url, port, stop))
    await asyncio.sleep(2)  # let every attack get going
    under_attack = await latencies(url, seconds)
    stop.set()
    attacking.cancel()
    try:
        await attacking
    except asyncio.CancelledError:
        pass
    return {"idle": idle, "under_attack": under_attack}


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still finishing requests after 30 s (attacks leave some)."""
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def print_attack(results: dict) -> None:
    for phase in ("idle", "under_attack"):
        for name, s in results[phase].items():
            print(f"{phase:>12} {name:<13} n={s['count']:<4} failed {s['failed']:<3} p50 {s['p50_s'] * 1000:7.1f} ms  "
                  f"p95 {s['p95_s'] * 1000:7.1f} ms  max {s['max_s'] * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: a random tiny model)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--n", type=int, default=8, help="samples per request of the n-samples measurement")
    parser.add_argument("--n-requests", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (1: the client needs a core)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "opencodegen-bench-serve")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--attack", action="store_true", help="latency of /health and a small request under attack")
    parser.add_argument("--attack-seconds", type=float, default=20.0)
    add_json_out(parser, "bench_serve")
    args = parser.parse_args()

    model = args.model or ensure_model(args.workdir)
    model_name = args.model.name if args.model else "tiny (random)"
    port = free_port()
    server = start_server(model, port, args.max_batch, max(256, args.clients), args.threads)
    url = f"http://127.0.0.1:{port}"
    if args.attack:
        try:
            results = asyncio.run(attack_mode(url, port, args.attack_seconds))
        finally:
            stop_server(server)
        print_attack(results)
        recorder = Recorder("bench_serve", args.json_out)
        for phase, probes in results.items():
            for name, s in probes.items():
                setting = {"model": model_name, "phase": phase.replace("_", " "), "probe": name.replace("_", " ")}
                for key in ("p50", "p95", "max"):
                    recorder.add(f"latency {key}", round(s[f"{key}_s"], 4), "s", setting,
                                 statistic=f"{s['count']} probes")
                recorder.add("failed probes", s["failed"], f"of {s['count']}", setting)
        recorder.write()
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        return
    try:
        load = asyncio.run(load_test(url, args.clients, args.requests, args.max_tokens))
        batching = asyncio.run(throughput(url, args.streams, 64))
        sampling = asyncio.run(n_samples(url, args.n_requests, args.n, 64))
    finally:
        server.terminate()
        server.wait(30)
    print(f"load test: {load['clients']} clients x {load['requests']} requests to {url}")
    print(f"  statuses {load['statuses']}, 5xx/transport errors {load['server_errors']}, lost {load['lost']}")
    print(f"  latency p50 {load['p50_latency_s']:.3f} s, p95 {load['p95_latency_s']:.3f} s; "
          f"{load['generated_tokens']} tokens in {load['wall_s']:.1f} s = {load['tokens_per_s']:.0f} tokens/s")
    print(f"continuous batching, {batching['streams']} streams x {batching['max_tokens']} tokens "
          f"(same tokens both ways: {batching['same_tokens']}):")
    print(f"  one at a time {batching['one_at_a_time_tokens_per_s']:.0f} tokens/s, "
          f"concurrent {batching['concurrent_tokens_per_s']:.0f} tokens/s: {batching['speedup']:.1f}x")
    print(f"n = {sampling['n']} samples, {sampling['requests']} requests x {sampling['max_tokens']} tokens: "
          f"one at a time {sampling['one_at_a_time_tokens_per_s']:.0f} tokens/s, "
          f"concurrent {sampling['concurrent_tokens_per_s']:.0f} tokens/s")
    recorder = Recorder("bench_serve", args.json_out)
    setting = {"model": model_name, "clients": load["clients"], "requests": load["requests"],
               "max_tokens": args.max_tokens, "threads": args.threads}
    for metric, key, unit in (("5xx responses", "server_errors", ""), ("lost responses", "lost", ""),
                              ("latency p50", "p50_latency_s", "s"), ("latency p95", "p95_latency_s", "s"),
                              ("throughput", "tokens_per_s", "tok/s")):
        recorder.add(metric, round(load[key], 3), unit, setting)
    for metric, result, extra in (("continuous batching", batching, {"streams": batching["streams"]}),
                                  (f"n = {sampling['n']} samples, concurrent requests", sampling,
                                   {"requests": sampling["requests"], "n": sampling["n"]})):
        recorder.add(metric, round(result["concurrent_tokens_per_s"], 1), "tok/s",
                     {"model": model_name, **extra, "max_tokens": result["max_tokens"], "max_batch": args.max_batch},
                     reference="one request at a time", reference_value=round(result["one_at_a_time_tokens_per_s"], 1),
                     ratio=round(result["concurrent_tokens_per_s"] / result["one_at_a_time_tokens_per_s"], 3))
    recorder.write()
    if args.out:
        args.out.write_text(json.dumps({"load": load, "batching": batching, "n_samples": sampling}, indent=2) + "\n")
    ok = load["server_errors"] == 0 and load["lost"] == 0 and batching["speedup"] >= 3
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
