"""`opencodegen info`: describe a checkpoint directory without loading its weights."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="print config, parameter count, dtype and tokenizer of a checkpoint")
    p.add_argument("model", help="checkpoint directory or hub id")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from opencodegen.checkpoint import read_tensors, resolve_checkpoint, weight_files
    from opencodegen.config import CodeGenConfig
    from opencodegen.tokenizer import CodeGenTokenizer

    directory = resolve_checkpoint(args.model)
    config = CodeGenConfig.from_json_file(directory / "config.json")
    files = weight_files(directory)
    dtypes: dict[str, int] = {}
    for _, _, tensor in read_tensors(files):
        name = str(tensor.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + tensor.numel()
    tokenizer = CodeGenTokenizer.from_pretrained(directory)
    info = {
        "directory": str(directory),
        "weights": [f.name for f in files],
        "parameters": config.num_parameters(),
        "dtype": max(dtypes, key=dtypes.get) if dtypes else None,
        "tokenizer_size": len(tokenizer),
        "whitespace_tokens": len(tokenizer.added_tokens),
        "eos_token_id": tokenizer.eos_token_id,
        "config": config.to_dict(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = config
    print(f"{directory}")
    print(f"  weights     {', '.join(info['weights'])} ({info['dtype']})")
    print(f"  parameters  {info['parameters'] / 1e6:,.1f}M")
    print(f"  shape       n_layer={c.n_layer} n_embd={c.n_embd} n_head={c.n_head} head_dim={c.head_dim} "
          f"rotary_dim={c.rotary_dim} n_positions={c.n_positions}")
    print(f"  vocabulary  {c.vocab_size} embedding rows; tokenizer {len(tokenizer)} ids "
          f"({info['whitespace_tokens']} whitespace tokens), eos={tokenizer.eos_token_id}")
    return 0
