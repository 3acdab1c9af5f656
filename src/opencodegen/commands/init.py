"""`opencodegen init`: write a randomly initialised model directory (HF layout + tokenizer)."""

from __future__ import annotations

import argparse
import itertools
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from opencodegen.cli_options import add_dtype_argument, add_seed_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "init",
        help="create a randomly initialised CodeGen model directory (for tests, demos, training)",
        description="Write config.json, model.safetensors and tokenizer files of a random model.",
    )
    p.add_argument("--preset", default="tiny", help="config preset (tiny, small, base, codegen-350M-mono, ...)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_seed_argument(p, default=0)
    add_dtype_argument(p, "dtype of the written weights (default: float32)", default="float32")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--tokenizer", type=Path, help="copy the tokenizer of this checkpoint directory")
    source.add_argument(
        "--train-tokenizer-on",
        nargs="+",
        metavar="PATH",
        help="train a byte-level BPE sized to the model's vocabulary on these files/directories, or the "
        "corpus specs 'stdlib:' and 'installed:permissive' of `data build` "
        "(default: the top-level modules of this Python's standard library)",
    )
    p.set_defaults(func=run)


def default_corpus() -> list[Path]:
    """The top-level modules of the running interpreter's standard library: present offline everywhere."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def tokenizer_corpus(inputs: list[str]) -> list[Path] | Iterator[str | Path]:
    """Paths for `train_tokenizer`; corpus specs become the texts `data build` reads for them."""
    from opencodegen.data.installed import expand_inputs, is_spec
    from opencodegen.data.sources import CorpusReader

    plain = [Path(item) for item in inputs if not is_spec(item)]
    specs = [item for item in inputs if is_spec(item)]
    if not specs:
        return plain
    files, _ = expand_inputs(specs)
    return itertools.chain(plain, (doc.text for doc in CorpusReader().read(files)))


def run(args: argparse.Namespace) -> int:
    import torch

    from opencodegen.config import CodeGenConfig
    from opencodegen.errors import ConfigError
    from opencodegen.model import CodeGenForCausalLM
    from opencodegen.tokenizer import WHITESPACE_TOKENS, CodeGenTokenizer, train_tokenizer

    config = CodeGenConfig.from_preset(args.preset)
    if args.tokenizer is not None:
        tokenizer = CodeGenTokenizer.from_pretrained(args.tokenizer)
    else:
        corpus = tokenizer_corpus(args.train_tokenizer_on) if args.train_tokenizer_on else default_corpus()
        tokenizer = train_tokenizer(corpus, vocab_size=config.vocab_size - len(WHITESPACE_TOKENS))
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} ids but preset {args.preset} has {config.vocab_size} rows")
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    torch.manual_seed(args.seed)
    with torch.device("cpu"):
        model = CodeGenForCausalLM(config)
    model.reset_parameters(seed=args.seed)
    model.save_pretrained(args.out, dtype=getattr(torch, args.dtype or "float32"))
    tokenizer.save_pretrained(args.out)
    print(f"wrote a random {args.preset} model ({model.num_parameters() / 1e6:.1f}M parameters, "
          f"tokenizer of {len(tokenizer)} ids) to {args.out}")
    return 0
