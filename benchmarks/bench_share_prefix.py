"""Shared prompt caches against a copy per row: where `engine.SHARE_MIN_PROMPT` comes from.

    python benchmarks/bench_share_prefix.py [--shape demo|350M] [--n 20] [--lengths 128 192 256 512]
        [--new-tokens 128] [--rounds 3] [--threads 2]

One prompt of each --lengths (random token ids) is continued by --n rows of --new-tokens tokens
each (EOS ignored), once with its cache kept once for all rows (`share_prefix=True`) and once
copied per row (`share_prefix=False`, the rows then decode through the native attention kernel),
in --rounds paired rounds whose order alternates. Reported per length: each side's best tokens/s
and the median of the per-round ratios shared / copied (over 1: sharing pays).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from records import Recorder, add_json_out, over


def load(shape: str):
    if shape == "demo":
        import opencodegen
        from opencodegen import default_model

        return opencodegen.load(default_model.resolve(None))[0]
    from opencodegen.config import CodeGenConfig
    from opencodegen.model import CodeGenForCausalLM

    torch.manual_seed(0)
    return CodeGenForCausalLM(CodeGenConfig.from_preset(shape)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="demo", help="demo (the embedded model) or a config preset, e.g. 350M")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 192, 256, 512])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    add_json_out(parser, "bench_share_prefix")
    args = parser.parse_args()
    from opencodegen.generation import Generator, SamplingParams

    torch.set_num_threads(args.threads)
    model = load(args.shape)
    generators = {"shared": Generator(model, share_prefix=True), "copied": Generator(model, share_prefix=False)}
    params = SamplingParams(n=args.n, max_new_tokens=args.new_tokens, temperature=0.8, ignore_eos=True, seed=0)
    recorder = Recorder("bench_share_prefix", args.json_out)
    print(f"{args.shape}, n = {args.n}, {args.new_tokens} new tokens, {args.threads} threads")
    for length in args.lengths:
        prompt = [torch.randint(0, 1000, (length,), generator=torch.Generator().manual_seed(length)).tolist()]
        for g in generators.values():  # warm-up: kernels built, allocator primed
            g.generate_ids(prompt, SamplingParams(n=args.n, max_new_tokens=4, ignore_eos=True, seed=0))
        seconds: dict[str, list[float]] = {name: [] for name in generators}
        for r in range(args.rounds):
            order = list(generators.items())
            for name, g in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                g.generate_ids(prompt, params)
                seconds[name].append(time.perf_counter() - start)
        tokens = args.n * args.new_tokens
        ratio = statistics.median(c / s for s, c in zip(seconds["shared"], seconds["copied"]))
        best = {name: tokens / min(times) for name, times in seconds.items()}
        print(f"prompt {length:5d}: shared {best['shared']:8.0f} tok/s  copied {best['copied']:8.0f} tok/s  "
              f"shared/copied {ratio:.2f}x")
        recorder.add("generated tokens/s, shared prompt", round(best["shared"]), "tokens/s",
                     {"shape": args.shape, "n": args.n, "prompt tokens": length, "new tokens": args.new_tokens,
                      "threads": args.threads},
                     statistic=over("best", args.rounds, "round"), reference="a copy per row",
                     reference_value=round(best["copied"]), ratio=round(ratio, 3),
                     note="ratio: median of the paired rounds")
    recorder.write()


if __name__ == "__main__":
    main()
