"""`opencodegen info`: describe a checkpoint without loading its weights.

A hub id that the local HF cache does not hold whole is described from its config.json alone
(fetched by itself), so that printing a config never downloads the weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from opencodegen.cli_options import add_json_argument, add_model_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="print config, parameter count, dtype and tokenizer of a checkpoint")
    add_model_argument(p)
    p.add_argument("model_positional", nargs="?", metavar="MODEL",
                   help="the same as --model (a hub id not cached whole: config.json only)")
    add_json_argument(p, "the description")
    p.set_defaults(func=run)


def _describe_directory(directory: Path) -> dict[str, Any]:
    """Config, weight files, stored dtype and tokenizer of a checkpoint directory."""
    from opencodegen.checkpoint.files import read_tensors, weight_files
    from opencodegen.config import CodeGenConfig
    from opencodegen.tokenizer import CodeGenTokenizer

    config = CodeGenConfig.from_json_file(directory / "config.json")
    files = weight_files(directory)
    dtypes: dict[str, int] = {}
    for _, _, tensor in read_tensors(files):
        name = str(tensor.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + tensor.numel()
    tokenizer = CodeGenTokenizer.from_pretrained(directory)
    return {
        "directory": str(directory),
        "config_only": False,
        "weights": [f.name for f in files],
        "parameters": config.num_parameters(),
        "dtype": max(dtypes, key=dtypes.get) if dtypes else None,
        "tokenizer_size": len(tokenizer),
        "whitespace_tokens": len(tokenizer.added_tokens),
        "eos_token_id": tokenizer.eos_token_id,
        "config": config.to_dict(),
    }


def _describe_config(config_file: Path) -> dict[str, Any]:
    """What config.json alone says (weights and tokenizer not downloaded)."""
    from opencodegen.config import CodeGenConfig

    config = CodeGenConfig.from_json_file(config_file)
    return {
        "directory": str(config_file.parent),
        "config_only": True,
        "weights": None,
        "parameters": config.num_parameters(),
        "dtype": config.extra.get("torch_dtype") or config.extra.get("dtype"),
        "tokenizer_size": None,
        "whitespace_tokens": None,
        "eos_token_id": config.eos_token_id,
        "config": config.to_dict(),
    }


def describe(model: str) -> dict[str, Any]:
    """The description `info` prints: a local directory or a hub id cached whole in full, another
    hub id from its config.json."""
    from opencodegen import hub
    from opencodegen.checkpoint.files import has_weights, resolve_checkpoint

    if hub.is_hub_id(model) and not Path(model).expanduser().exists():
        cached = hub.cached_snapshot(model, has_weights)
        return _describe_directory(cached) if cached else _describe_config(hub.config_file(model))
    return _describe_directory(resolve_checkpoint(model))


def run(args: argparse.Namespace) -> int:
    from opencodegen import default_model
    from opencodegen.config import CodeGenConfig
    from opencodegen.errors import ConfigError

    if args.model and args.model_positional and args.model != args.model_positional:
        raise ConfigError(f"two models given ({args.model_positional} and --model {args.model}); give one")
    info = describe(default_model.resolve(args.model or args.model_positional))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = CodeGenConfig.from_dict(info["config"])
    print(info["directory"])
    if info["config_only"]:
        print(f"  weights     not downloaded (config.json only; stored as {info['dtype'] or 'unknown dtype'})")
    else:
        print(f"  weights     {', '.join(info['weights'])} ({info['dtype']})")
    print(f"  parameters  {info['parameters'] / 1e6:,.1f}M")
    print(f"  shape       n_layer={c.n_layer} n_embd={c.n_embd} n_head={c.n_head} head_dim={c.head_dim} "
          f"rotary_dim={c.rotary_dim} n_positions={c.n_positions}")
    if info["config_only"]:
        print(f"  vocabulary  {c.vocab_size} embedding rows, eos={c.eos_token_id} (tokenizer not downloaded)")
    else:
        print(f"  vocabulary  {c.vocab_size} embedding rows; tokenizer {info['tokenizer_size']} ids "
              f"({info['whitespace_tokens']} whitespace tokens), eos={info['eos_token_id']}")
    return 0
