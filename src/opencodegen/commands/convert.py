"""`opencodegen convert jaxformer|gptj|checkpoint|merge-lora`: checkpoints in and out of the HF CodeGen layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from opencodegen.cli_options import dtype_name


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert checkpoints (JAXFORMER import, GPT-J export, training export)")
    sub = p.add_subparsers(dest="convert_command", metavar="FORMAT", required=True)

    j = sub.add_parser("jaxformer", help="JAXFORMER checkpoint ({ckpt_dir}/{step}/model/0.npz) -> HF CodeGen directory")
    j.add_argument("source", help="a JAXFORMER step directory, or a ckpt_dir holding numbered steps")
    j.add_argument("--out", required=True, help="output HF directory")
    j.add_argument("--config", help="the run's JAXFORMER config JSON (gives heads, rotary dims, seq len, tpu_cores)")
    j.add_argument("--n-head", type=int, help="attention heads (without --config)")
    j.add_argument("--rotary-dim", type=int, help="rotary dimensions per head (without --config)")
    j.add_argument("--mp-num", type=int,
                   help="model-parallel degree of the run = qkv shards (default: tpu_cores of --config)")
    j.add_argument("--seq-len", type=int, help="n_positions (default: model_seq_len of --config, else 2048)")
    j.add_argument("--step", type=int, help="step to import from a ckpt_dir (default: the latest)")
    j.add_argument("--tokenizer", help="tokenizer directory or hub id to copy in (e.g. Salesforce/codegen-350M-mono)")
    j.add_argument("--dtype", type=dtype_name, help="float32, bfloat16 or float16 (default: as stored)")
    j.set_defaults(func=run_jaxformer)

    g = sub.add_parser("gptj", help="HF CodeGen checkpoint -> GPTJForCausalLM directory (CTranslate2 tested; vLLM, TGI untested)")
    g.add_argument("source", help="CodeGen checkpoint directory or hub id")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--dtype", type=dtype_name, help="float32, bfloat16 or float16 (default: as stored)")
    g.set_defaults(func=run_gptj)

    c = sub.add_parser("checkpoint", help="training checkpoint (or a run's newest good one) -> HF CodeGen directory")
    c.add_argument("source", help="a checkpoint directory (…/checkpoints/step-N) or a run directory (out_dir)")
    c.add_argument("--out", required=True, help="output HF directory")
    c.add_argument("--dtype", type=dtype_name, help="float32, bfloat16 or float16 (default: float32, as trained)")
    c.set_defaults(func=run_checkpoint)

    m = sub.add_parser("merge-lora", help="LoRA adapter directory (peft layout) + its base -> merged HF CodeGen directory")
    m.add_argument("adapter", help="adapter directory (adapter_config.json + adapter_model.safetensors), e.g. a LoRA "
                   "run's final/ or one of its checkpoints")
    m.add_argument("--base", help="base model directory or hub id (default: the adapter's base_model_name_or_path)")
    m.add_argument("--out", required=True, help="output HF directory")
    m.add_argument("--dtype", type=dtype_name, help="float32, bfloat16 or float16 (default: the base model's)")
    m.set_defaults(func=run_merge_lora)


def _copy_tokenizer(source: str, out: Path) -> list[str]:
    """Copy tokenizer files from a directory or a hub repository (tokenizer files only) into `out`."""
    from opencodegen.errors import CheckpointError
    from opencodegen.tokenizer import TOKENIZER_FILES
    from opencodegen.training.checkpointing import copy_tokenizer_files

    directory = Path(source).expanduser()
    if not directory.is_dir():
        try:
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(source, allow_patterns=list(TOKENIZER_FILES)))
        except Exception as exc:
            raise CheckpointError(f"tokenizer {source!r}: no such directory, and the hub fetch failed ({exc})") from None
    names = copy_tokenizer_files(directory, out)
    if not names:
        raise CheckpointError(f"{directory}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return names


def run_jaxformer(args: argparse.Namespace) -> int:
    from opencodegen.checkpoint.jaxformer import import_jaxformer, read_jaxformer_config
    from opencodegen.devices import parse_dtype
    from opencodegen.errors import ConfigError

    settings = read_jaxformer_config(args.config) if args.config else {}
    n_head = args.n_head or settings.get("n_head")
    rotary_dim = args.rotary_dim or settings.get("rotary_dim")
    mp_num = args.mp_num or settings.get("mp_num")
    if not (n_head and rotary_dim and mp_num):
        raise ConfigError("give --config (the run's JAXFORMER JSON) or all of --n-head, --rotary-dim and --mp-num")
    out = Path(args.out)
    source, config = import_jaxformer(
        args.source, out, n_head=n_head, rotary_dim=rotary_dim, mp_num=mp_num,
        n_positions=args.seq_len or settings.get("n_positions", 2048), step=args.step,
        dtype=parse_dtype(args.dtype) if args.dtype else None,
    )
    print(f"imported {source}: {config.n_layer} layers, d={config.n_embd}, vocab {config.vocab_size} -> {out}")
    if args.tokenizer:
        _copy_tokenizer(args.tokenizer, out)
    else:
        print("note: no --tokenizer given; copy the tokenizer files into the output to use it for generation")
    return 0


def run_gptj(args: argparse.Namespace) -> int:
    from opencodegen.checkpoint import load_model
    from opencodegen.checkpoint.gptj import export_gptj
    from opencodegen.tokenizer import TOKENIZER_FILES, CodeGenTokenizer

    directory, model = load_model(args.source)
    has_tokenizer = any((directory / name).is_file() for name in TOKENIZER_FILES)
    tokenizer = CodeGenTokenizer.from_pretrained(directory) if has_tokenizer else None
    export_gptj(model, args.out, dtype=args.dtype, tokenizer=tokenizer)
    if tokenizer is None:
        print(f"wrote GPT-J checkpoint {args.out} (the source had no tokenizer files)")
    else:
        padded = model.config.vocab_size - len(tokenizer)
        print(f"wrote GPT-J checkpoint {args.out}"
              + (f" (tokenizer padded with {padded} placeholder tokens, one per embedding row)" if padded > 0 else ""))
    return 0


def run_checkpoint(args: argparse.Namespace) -> int:
    from opencodegen.training.checkpointing import export_checkpoint

    source = export_checkpoint(args.source, args.out, dtype=args.dtype)
    print(f"exported {source} -> {args.out}")
    return 0


def run_merge_lora(args: argparse.Namespace) -> int:
    from opencodegen.checkpoint.lora import load_merged
    from opencodegen.training.checkpointing import copy_tokenizer_files

    tokenizer_dir, model = load_merged(args.adapter, base=args.base, dtype=args.dtype)
    out = Path(args.out)
    model.save_pretrained(out)
    copied = copy_tokenizer_files(tokenizer_dir, out)
    print(f"merged {args.adapter} into its base -> {out}" + ("" if copied else " (no tokenizer files found)"))
    return 0
