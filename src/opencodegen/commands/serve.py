"""`opencodegen serve`: the OpenAI-compatible completion server and the multi-turn synthesis page."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from opencodegen import default_model
from opencodegen.commands import add_isolation_argument, add_quantize_argument

LOOPBACK = "127.0.0.1"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API, with a web page for multi-turn synthesis",
        description="POST /v1/completions (streaming, stop, logprobs, n, seed), GET /v1/models, /health, "
        "/metrics, and the multi-turn synthesis page at /. Requests are continuously batched.",
    )
    default_model.add_argument(p)
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("OPENCODEGEN_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $OPENCODEGEN_API_KEY, else no key)")  # fmt: skip
    p.add_argument("--model-name", help="model id reported by the API (default: the directory name)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    add_quantize_argument(p)
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (also the largest n)")
    p.add_argument("--max-tokens-limit", type=int, default=None, help="largest max_tokens (default: the context)")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before answering 429")
    p.add_argument("--max-sessions", type=int, default=16, help="live multi-turn sessions of the web page")
    add_isolation_argument(p)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 suits tiny models on a busy machine)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import functools

    import torch
    import uvicorn

    from opencodegen import load
    from opencodegen.errors import ConfigError
    from opencodegen.execution.sandbox import resolve_isolation
    from opencodegen.serving.app import create_app
    from opencodegen.synthesis.interpreter import Interpreter
    from opencodegen.synthesis.session import Session

    for name in ("max_batch", "max_queue", "max_sessions", "port", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_tokens_limit is not None and args.max_tokens_limit < 1:
        raise ConfigError("--max-tokens-limit must be >= 1")
    if not _is_loopback(args.host) and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it may run code "
              "through the session page", file=sys.stderr)  # fmt: skip
    isolation = resolve_isolation(args.isolation)  # sessions run code: refuse now, not at the first one
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.model = default_model.resolve(args.model)
    model, tokenizer = load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)
    name = args.model_name or os.path.basename(os.path.normpath(args.model))
    app = create_app(
        model, tokenizer, model_name=name, api_key=args.api_key or None, max_batch=args.max_batch,
        max_queue=args.max_queue, max_tokens_limit=args.max_tokens_limit, max_sessions=args.max_sessions,
        session_factory=functools.partial(Session, interpreter_factory=functools.partial(
            Interpreter, isolation=isolation.request)),
    )  # fmt: skip
    print(f"serving {name} on http://{args.host}:{args.port} (web page at /, API at /v1; session code runs with "
          f"isolation {isolation.mode})", file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
