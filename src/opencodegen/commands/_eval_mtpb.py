"""`opencodegen eval mtpb` and `opencodegen eval mtpb-perplexity` (nested under `eval`).

`add_mtpb_parsers(nested_subparsers)` adds both; heavy imports happen inside the runners.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from opencodegen import default_model
from opencodegen.cli_options import (
    add_isolation_argument,
    add_model_options,
    add_seed_argument,
    non_negative_int,
    positive_int,
    probability,
)
from opencodegen.errors import ConfigError
from opencodegen.evaluation import planning
from opencodegen.evaluation.protocols import add_protocol_argument, get_protocol, protocol_settings


def add_mtpb_parsers(sub: Any) -> None:
    """Register the `mtpb` and `mtpb-perplexity` sub-commands on `eval`'s subparsers."""
    p = sub.add_parser(
        "mtpb",
        help="MTPB multi-turn benchmark: write programs with a model (or score --programs) in the sandbox",
        description="Multi-Turn Programming Benchmark (115 problems x 5 test cases). Generates programs "
        "turn by turn (or all at once with --mode single, a reconstruction), runs each in the sandbox "
        "and checks its last printed value. Resumable: rerun with the same --out to continue.",
    )
    _common(p)
    p.add_argument("--mode", choices=["multi", "single", "both"], default="multi", help="multi-turn, single-turn or both")
    p.add_argument("--num-samples", "--n", dest="n", type=positive_int, default=1, help="samples per test case (default 1)")
    p.add_argument("--temperature", type=float, default=0.2, help="sampling temperature (default 0.2)")
    add_protocol_argument(p, "mtpb")
    p.add_argument("--top-p", type=probability, help="nucleus top-p (default: the protocol's, 0.95)")
    p.add_argument("--top-k", type=non_negative_int, help="keep the k most likely tokens, 0 = off (default: the protocol's)")
    p.add_argument("--programs", metavar="FILE.jsonl", help='score these programs instead of generating: rows {"id", "test", "program"}')
    p.add_argument("--workers", type=positive_int, default=None, help="parallel sandboxes (default: number of CPUs)")
    add_isolation_argument(p)
    p.set_defaults(func=run_mtpb)

    q = sub.add_parser(
        "mtpb-perplexity",
        help="perplexity of MTPB turn prompts given the history, multi-turn vs single-turn",
        description="The paper's prompt-perplexity analysis: NLL of the `# prompt` tokens when they are "
        "interleaved with code (multi-turn) vs. written at once (single-turn), per problem.",
    )
    _common(q)
    q.add_argument("--samples", metavar="FILE.jsonl", help="take the multi-turn code from an `eval mtpb` samples_multi.jsonl (sample 0)")
    q.add_argument("--temperature", type=float, default=0.0, help="without --samples: temperature of the code turns (0 = greedy)")
    q.set_defaults(func=run_perplexity)


def _common(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--data", metavar="FILE", help="mtpb.jsonl (default: cache, else download the pinned file)")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory (resumable)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first K problems")
    p.add_argument("--problems", metavar="IDS", help="comma-separated problem ids, e.g. 1,5,31")
    add_seed_argument(p, default=0)


def _benchmark(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    from opencodegen.evaluation.mtpb.data import load_mtpb
    from opencodegen.evaluation.mtpb.run import select

    benchmark = load_mtpb(args.data)
    for warning in benchmark.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    ids = [i.strip() for i in args.problems.split(",") if i.strip()] if args.problems else None
    return benchmark, select(benchmark, ids, args.limit)


def _load_model(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, the run's record of them: run_record.model_record plus the quantization)."""
    from opencodegen.checkpoint import load_model, resolve_checkpoint
    from opencodegen.evaluation.run_record import model_record
    from opencodegen.tokenizer import CodeGenTokenizer

    args.model = default_model.resolve(args.model)
    directory, model = load_model(resolve_checkpoint(args.model), device=args.device, dtype=args.dtype,
                                  quantize=args.quantize)
    record = {**model_record(args.model, directory, model), "quantization": args.quantize}
    return model, CodeGenTokenizer.from_pretrained(directory), record


def run_mtpb(args: argparse.Namespace) -> int:
    from opencodegen.evaluation.mtpb import run as mtpb_run
    from opencodegen.execution.sandbox import resolve_isolation

    if args.programs and args.model:
        raise ConfigError("give either --model (generate) or --programs (score), not both")
    isolation = resolve_isolation(args.isolation)  # refuses here, before anything is written
    out = planning.check_out_dir(args.out)  # before anything loads
    benchmark, problems = _benchmark(args)
    by_id = benchmark.by_id()
    if args.programs:
        if args.protocol is not None:
            raise ConfigError("--protocol sets how --model writes programs; --programs are scored as they are")
        from opencodegen.evaluation.humaneval import file_digest

        mtpb_run.check_config(out, {"programs": str(Path(args.programs).resolve()),
                                    "programs_sha256": file_digest(args.programs), "data_sha256": benchmark.sha256,
                                    "isolation": isolation.mode})
        ids = {p.id for p in problems}
        samples = [s for s in mtpb_run.load_programs(args.programs, by_id) if s["id"] in ids]
        results = {"programs": mtpb_run.score(samples, by_id, "programs", out, args.workers, isolation.request)}
        extra: dict[str, Any] = {"programs": args.programs}
    else:
        from opencodegen.evaluation.run_record import package_versions, sampling_record
        from opencodegen.generation import Generator, SamplingParams

        sampling = protocol_settings(args, "mtpb")  # refuses bad values before the model loads
        protocol = get_protocol(sampling["protocol"], "mtpb")
        modes = ["multi", "single"] if args.mode == "both" else [args.mode]
        planning.print_mtpb_work(problems, modes, args.n, args.temperature)
        model, tokenizer, record = _load_model(args)
        params = SamplingParams(n=args.n, temperature=args.temperature, top_p=sampling["top_p"],
                                top_k=sampling["top_k"], seed=args.seed)
        settings = {"model": record, "n": args.n, "temperature": args.temperature, **sampling,
                    "seed": args.seed, "data_sha256": benchmark.sha256, "sampling": sampling_record(params),
                    "versions": package_versions(), "isolation": isolation.mode}
        mtpb_run.check_config(out, settings)
        generator = Generator(model, tokenizer)
        planning.mtpb_batch(generator, problems, modes, args.n, args.temperature)
        results = {}
        for mode in modes:
            samples = mtpb_run.generate(problems, generator, params, mode, out, protocol)
            results[mode] = mtpb_run.score(samples, by_id, mode, out, args.workers, isolation.request)
        extra = {"settings": settings}
    summary = mtpb_run.write_summary(out, benchmark, results, {**extra, "isolation": isolation.mode})
    for mode, numbers in summary["modes"].items():
        print(f"MTPB {mode}: pass rate {numbers['pass_rate']:.2f}% over {numbers['problems']} problems "
              f"({numbers['programs']} programs)")
    print(f"isolation: {isolation.mode}")
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {out / 'summary.json'} and {out / 'mtpb_categories.png'}")
    return 0


def run_perplexity(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from opencodegen.evaluation.mtpb.generate import generate_multi_turn
    from opencodegen.evaluation.mtpb.perplexity import problem_perplexity
    from opencodegen.evaluation.mtpb.run import check_config
    from opencodegen.io import ResultStore

    out = planning.check_out_dir(args.out)  # before anything loads
    benchmark, problems = _benchmark(args)
    model, tokenizer, record = _load_model(args)
    samples = str(Path(args.samples).resolve()) if args.samples else None
    check_config(out, {"model": record, "samples": samples, "temperature": None if samples else args.temperature,
                       "seed": None if samples else args.seed, "data_sha256": benchmark.sha256})
    stored = _stored_completions(args.samples) if args.samples else None
    store = ResultStore(out / "perplexity.jsonl", ["id"])
    generator = params = None
    if stored is None:
        from opencodegen.generation import Generator, SamplingParams

        generator = Generator(model, tokenizer)
        params = SamplingParams(n=1, temperature=args.temperature, seed=args.seed)
    for problem in tqdm(problems, desc="MTPB prompt perplexity", unit="problem"):
        if (problem.id,) in store:
            continue
        if stored is not None:
            completions = stored.get(problem.id, {})
        else:
            records = generate_multi_turn(generator, [problem], params)
            completions = {r["test"]: r["completions"] for r in records}
        store.append({"id": problem.id, **problem_perplexity(model, tokenizer, problem, completions)})
    ids = {p.id for p in problems}
    rows = [r for r in store.records if r["id"] in ids]
    summary = {"problems": len(rows), "source_of_code": args.samples or "generated"}
    for mode in ("multi", "single"):
        values = [r[mode] for r in rows if r[mode] is not None]
        summary[f"{mode}_mean_perplexity"] = sum(values) / len(values) if values else None
    summary["per_problem"] = {r["id"]: {"multi": r["multi"], "single": r["single"]} for r in rows}
    (out / "perplexity_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"prompt perplexity over {len(rows)} problems: multi-turn {_fmt(summary['multi_mean_perplexity'])}, "
          f"single-turn {_fmt(summary['single_mean_perplexity'])}")
    print(f"wrote {out / 'perplexity_summary.json'}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _stored_completions(path: str) -> dict[str, dict[int, list[str]]]:
    """{problem id: {test: code turns}} from sample 0 of an `eval mtpb` samples_multi.jsonl."""
    from opencodegen.errors import DataError
    from opencodegen.io import read_jsonl

    found: dict[str, dict[int, list[str]]] = {}
    for lineno, row in read_jsonl(path):
        try:
            if row.get("mode", "multi") == "multi" and row["sample"] == 0:
                found.setdefault(str(row["id"]), {})[int(row["test"])] = list(row["completions"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}:{lineno}: not a samples_multi.jsonl row") from None
    return found
