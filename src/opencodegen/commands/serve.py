"""`opencodegen serve`: the OpenAI-compatible completion server and the multi-turn synthesis page."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from opencodegen import default_model
from opencodegen.cli_options import add_isolation_argument, add_model_options, positive_float, positive_int

LOOPBACK = "127.0.0.1"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API, with a web page for multi-turn synthesis",
        description="POST /v1/completions (streaming, stop, logprobs, n, seed), GET /v1/models, /health, "
        "/metrics, and the multi-turn synthesis page at /. Requests are continuously batched.",
    )
    add_model_options(p)
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default: loopback only)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("OPENCODEGEN_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $OPENCODEGEN_API_KEY, else no key)")
    p.add_argument("--model-name", help="model id reported by the API (default: the directory name)")
    p.add_argument("--max-batch", type=positive_int, default=16, help="sequences decoded together (also the largest n)")
    p.add_argument("--max-tokens-limit", type=positive_int, default=None, help="largest max_tokens (default: the context)")
    p.add_argument("--max-queue", type=positive_int, default=256, help="waiting requests before answering 429")
    p.add_argument("--max-sessions", type=positive_int, default=16, help="live multi-turn sessions of the web page")
    add_isolation_argument(p)
    _add_hardening_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import functools

    import uvicorn

    from opencodegen import load
    from opencodegen.execution.sandbox import resolve_isolation
    from opencodegen.serving.app import create_app
    from opencodegen.serving.guard import header_timeout_protocol
    from opencodegen.synthesis.interpreter import Interpreter
    from opencodegen.synthesis.session import Session

    _check_hardening_arguments(args)
    isolation = resolve_isolation(args.isolation)  # sessions run code: refuse now, not at the first one
    args.model = default_model.resolve(args.model)
    model, tokenizer = load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)
    name = args.model_name or os.path.basename(os.path.normpath(args.model))
    app = create_app(
        model, tokenizer, model_name=name, api_key=args.api_key or None, max_batch=args.max_batch,
        max_queue=args.max_queue, max_tokens_limit=args.max_tokens_limit, max_sessions=args.max_sessions,
        session_factory=functools.partial(Session, interpreter_factory=functools.partial(
            Interpreter, isolation=isolation.request)),
        allowed_hosts=[args.host, *args.allowed_host], max_prompts=args.max_prompts, session_ttl=args.session_ttl,
        session_memory_budget_mb=args.session_memory_budget, max_sessions_per_client=args.max_sessions_per_client,
        body_timeout=args.body_timeout,
    )
    print(f"serving {name} on http://{args.host}:{args.port} (web page at /, API at /v1; session code runs with "
          f"isolation {isolation.mode})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", http=header_timeout_protocol(args.header_timeout))
    return 0


def _add_hardening_arguments(p: argparse.ArgumentParser) -> None:
    """Who may reach the server and what one client may make it hold."""
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header names NAME (repeatable; '*': any). Loopback "
                   "names and the --host address are always allowed; others get 421 (DNS rebinding)")
    p.add_argument("--insecure-no-key", action="store_true",
                   help="serve a non-loopback --host without --api-key (anyone who can reach it may run code)")
    p.add_argument("--max-prompts", type=positive_int, default=2048, help="prompts in one completion request")
    p.add_argument("--session-ttl", type=positive_float, default=1800.0,
                   help="seconds a session may stay unused before it is closed (default: 30 min)")
    p.add_argument("--session-memory-budget", type=positive_int, default=None, metavar="MIB",
                   help="memory for all sessions' interpreters together (default: half the machine's memory); "
                   "new sessions beyond it get 429")
    p.add_argument("--max-sessions-per-client", type=positive_int, default=4, help="live sessions of one client address")
    p.add_argument("--header-timeout", type=positive_float, default=15.0,
                   help="seconds a request's headers may take to arrive before the connection is closed")
    p.add_argument("--body-timeout", type=positive_float, default=30.0,
                   help="seconds a request's body may take to arrive (408 after that)")


def _check_hardening_arguments(args: argparse.Namespace) -> None:
    """Refuse a non-loopback address without a key unless --insecure-no-key says so."""
    from opencodegen.errors import ConfigError
    from opencodegen.synthesis.interpreter import MEMORY_MB

    if args.session_memory_budget is not None and args.session_memory_budget < MEMORY_MB:
        raise ConfigError(f"--session-memory-budget must hold one session ({MEMORY_MB} MiB)")
    if _is_loopback(args.host) or args.api_key:
        return
    if not args.insecure_no_key:
        raise ConfigError(f"refusing to serve on {args.host} without --api-key: anyone who can reach it could run "
                          "code through the session API. Set --api-key (or $OPENCODEGEN_API_KEY), or pass "
                          "--insecure-no-key to do it anyway.")
    print(f"warning: --insecure-no-key: serving on {args.host} without an API key; anyone who can reach it may "
          "run code through the session API", file=sys.stderr)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
