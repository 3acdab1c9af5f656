"""`opencodegen generate`: complete a prompt with a CodeGen model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from opencodegen import default_model
from opencodegen.cli_options import (
    add_json_argument,
    add_model_options,
    add_seed_argument,
    non_negative_int,
    positive_int,
    probability,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="complete a prompt (sampling, stop strings, CodeGen truncation, streaming)",
        description="Sample completions of a prompt. Defaults are CodeGen's demo sampler's "
        "(jaxformer/hf/sample.py: temperature 0.2, top-p 0.95, 128 new tokens) without the top-k 50 "
        "its transformers version added.",
    )
    add_model_options(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text")
    source.add_argument("--prompt-file", type=Path, help="file holding the prompt ('-' reads standard input)")
    p.add_argument("--n", type=positive_int, default=1, help="completions to sample (default: 1)")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="token budget per completion (default: 128)")
    p.add_argument("--temperature", type=float, default=0.2, help="0 = greedy (default: 0.2)")
    p.add_argument("--top-p", type=probability, default=0.95, help="nucleus mass (default: 0.95)")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="keep the k most likely tokens, 0 = off (default)")
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="subtract this from the logit of every token the completion already holds (-2..2)")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="subtract this once per occurrence in the completion so far (-2..2)")
    add_seed_argument(p, default=None)
    p.add_argument("--stop", nargs="+", action="extend", default=[], metavar="S",
                   help="stop strings (escape sequences like \\n are understood)")
    p.add_argument("--truncate", choices=["codegen", "humaneval", "none"], default="none",
                   help="CodeGen's truncation rules, the HumanEval stop list, or none (default)")
    p.add_argument("--truncate-prompt", action="store_true",
                   help="drop the oldest prompt tokens when the prompt does not fit the context")
    p.add_argument("--logprobs", type=non_negative_int, metavar="K", help="report token log-probabilities with K alternatives")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--stream", action="store_true", help="print text as it is generated (--n 1)")
    add_json_argument(output, "one object with all completions, their token ids and the seed")
    p.set_defaults(func=run)


def _unescape(text: str) -> str:
    return text.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")


def _read_prompt(args: argparse.Namespace) -> str:
    from opencodegen.errors import GenerationError

    if args.prompt is not None:
        return args.prompt
    if str(args.prompt_file) == "-":
        return sys.stdin.read()
    try:
        return args.prompt_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerationError(f"{args.prompt_file}: cannot read the prompt ({exc})") from None


def run(args: argparse.Namespace) -> int:
    import secrets

    from opencodegen import load
    from opencodegen.errors import GenerationError
    from opencodegen.generation import Generator, SamplingParams

    if args.stream and args.n != 1:
        raise GenerationError("--stream prints a single completion; use --n 1 (or --json for several)")
    try:
        stops = [_unescape(s) for s in args.stop]
    except UnicodeError as exc:
        raise GenerationError(f"bad escape sequence in --stop ({exc})") from None
    prompt = _read_prompt(args)
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    params = SamplingParams(
        n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, seed=seed, stop=tuple(stops), truncate=args.truncate, logprobs=args.logprobs,
        truncate_prompt=args.truncate_prompt, presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
    )
    args.model = default_model.resolve(args.model)
    model, tokenizer = load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)
    generator = Generator(model, tokenizer)

    if args.stream:
        for delta in generator.stream(prompt, params):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    completions = generator.generate([prompt], params)[0]
    if args.json:
        record = {
            "model": args.model,
            "prompt": prompt,
            "params": {k: v for k, v in vars(params).items() if k != "stop"} | {"stop": list(params.stop)},
            "completions": [
                {
                    "text": c.text,
                    "finish_reason": c.finish_reason,
                    "token_ids": c.token_ids,
                    **({"logprobs": [vars(t) for t in c.logprobs]} if c.logprobs is not None else {}),
                }
                for c in completions
            ],
        }
        print(json.dumps(record, ensure_ascii=False))
        return 0
    for i, c in enumerate(completions):
        if args.n > 1:
            print(f"=== sample {i + 1}/{args.n} ({c.finish_reason}) ===")
        print(c.text)
    return 0
