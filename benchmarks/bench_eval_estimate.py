"""How close `eval humaneval`'s warm-up estimate comes to the sampling time it predicts.

    python benchmarks/bench_eval_estimate.py [--model DIR] [--limit 6] [--n 8] [--max-new-tokens 64]
        [--device cpu] [--repeat 2]

Per round: the warm-up's estimate of sampling `limit` problems x n samples at one temperature,
then the time of that work with every completion run to its full budget (EOS ignored: what the
estimate extrapolates), and the time of the real run (HumanEval's stop list, as `eval humaneval`
samples). Prints both ratios to the estimate; the first should be near 1, the second at most 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from records import Recorder, add_json_out, over


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: the embedded demo model)")
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    add_json_out(parser, "bench_eval_estimate")
    args = parser.parse_args()

    from opencodegen import default_model
    from opencodegen.checkpoint import load_model, resolve_checkpoint
    from opencodegen.evaluation import humaneval as he
    from opencodegen.evaluation import planning
    from opencodegen.generation import Generator
    from opencodegen.io import ResultStore
    from opencodegen.tokenizer import CodeGenTokenizer

    directory, model = load_model(resolve_checkpoint(default_model.resolve(args.model)), device=args.device)
    generator = Generator(model, CodeGenTokenizer.from_pretrained(directory))
    problems = he.load_problems(limit=args.limit)
    prompts = [p.prompt for p in problems]
    batch = planning.humaneval_batch(generator, prompts, args.n, [args.temperature], args.max_new_tokens, None, 1,
                                     show=True)
    calls = len(problems) * -(-args.n // batch)
    base = he.sampling_params(0.95, args.max_new_tokens, 0)
    ratios: dict[str, list[float]] = {"full budget": [], "real run": []}
    for round_ in range(args.repeat):
        speed = planning.warm_up(generator, prompts[0], min(batch, args.n), args.temperature)
        estimate = speed.seconds(calls, calls * args.max_new_tokens)
        full = dataclasses.replace(base, n=args.n, temperature=args.temperature, truncate=None, ignore_eos=True)
        start = time.perf_counter()
        for prompt in prompts:
            generator.generate([prompt], full)
        full_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            store = ResultStore(Path(tmp) / "samples.jsonl", he.KEY)
            start = time.perf_counter()
            he.generate_samples(generator, problems, store, n=args.n, temperatures=[args.temperature], top_p=0.95,
                                max_new_tokens=args.max_new_tokens, seed=round_, progress=False)
            real_s = time.perf_counter() - start
        ratios["full budget"].append(full_s / estimate)
        ratios["real run"].append(real_s / estimate)
        print(f"round {round_}: estimate {estimate:.2f} s; full budget {full_s:.2f} s ({full_s / estimate:.2f}x); "
              f"real run {real_s:.2f} s ({real_s / estimate:.2f}x)")
    import torch

    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None
    recorder = Recorder("bench_eval_estimate", args.json_out, gpu=gpu)
    setting = {"model": args.model or "default demo", "limit": args.limit, "n": args.n,
               "max_new_tokens": args.max_new_tokens, "device": args.device}
    for what, values in ratios.items():
        recorder.add(f"{what} time / warm-up estimate", round(statistics.median(values), 3), "×", setting,
                     statistic=over("median", args.repeat, "round"))
    recorder.write()


if __name__ == "__main__":
    main()
