"""Generation speed: opencodegen's engine vs transformers' generate on the same random weights.

    python benchmarks/bench_generate.py [--quick] [--threads 2] [--repeat 2] [--json out.json]
    python benchmarks/bench_generate.py --device cuda --dtype bf16 [--quick]

Both run in this process, side by side, on one random checkpoint of the 350M shape (--quick: the
"small" preset, shorter prompt and budget). Every generation produces exactly --new-tokens
tokens (EOS is ignored). The machine's speed drifts (other tenants share its memory bandwidth), so
the measurements run in --repeat rounds, each timing transformers and then ours back to back for
every row. Reported per row: each side's best time over the rounds, the ratio of the two bests,
and the median of the per-round ratios (the paired figure, robust to drift between rounds):
  prefill     time to the first token (generate with a budget of 1) for a --prompt-len prompt
  greedy      batch-1 greedy, end-to-end generated tokens/s; decode step = (greedy - prefill) / (new - 1)
  n=8         --n samples of one prompt (T 0.2, top-p 0.95, no top-k), generated tokens/s
  modes       our greedy with faster weights vs transformers greedy in --dtype (on CPU: int8
              weights with dynamically quantized activations and, where its kernel runs, int4
              weights (both fp32 only), and bf16; on CUDA: the half-precision dtypes other than
              --dtype, no int8 or int4), with their quality cost against
              our --dtype model: max |logit - reference logit| over prompt + continuation, how many
              greedy tokens equal the reference's before the first difference, and how often the
              arg-max agrees with the reference's along its greedy path (random weights have nearly
              flat logits, so near-ties make these agreement figures pessimistic)
Both models run on --device in --dtype (--threads only matters on CPU); on CUDA every timed region
ends with a synchronize. The decode bound is weight bytes read per token (all weights but the
embedding, of which one row is read) divided by the bandwidth of a large memory copy measured on
the device ((read + write) / time); plain reads run faster than a copy, so a step can beat this bound.
On CPU, fp32 batches of 1 … 8 rows (greedy, n=8) and bf16 ones of 1 … 4 (bf16 greedy) use our
AVX-512 small-batch kernel, and the decode steps of greedy, int8, int4 and bf16 our decode-attention
kernel, where they are available (the header says whether); OPENCODEGEN_CPU_KERNEL=0 measures
without them.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from records import Recorder, add_json_out, over

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call; device work is waited for inside the timed region."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, repeat: int = 5) -> float:
    """Bytes read + written per second when copying, on `device`, a buffer much larger than the caches."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    return 2 * nbytes / min(timed(lambda: dst.copy_(src), device) for _ in range(repeat))


def decode_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights read to decode one token: everything but the embedding table (one row)."""
    wte = model.transformer.wte.weight
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if t is not model.rotary)
    return total - wte.numel() * wte.element_size() + wte.shape[1] * wte.element_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, short prompt and budget")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="weights of both models")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU only)")
    parser.add_argument("--prompt-len", type=int)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of measurements (each side's best is kept)")
    parser.add_argument("--json", type=Path, help="also write every round's raw results here")
    add_json_out(parser, "bench_generate")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA device "
                     f"(built with CUDA {torch.version.cuda or 'none'})")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    on_gpu = device.type == "cuda"
    device_name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    preset = "small" if args.quick else "codegen-350M-mono"
    prompt_len = args.prompt_len or (64 if args.quick else 256)
    new = args.new_tokens or (32 if args.quick else 128)

    import transformers

    from opencodegen.checkpoint import load_model
    from opencodegen.config import CodeGenConfig
    from opencodegen.generation import Generator, SamplingParams
    from opencodegen.kernels import decode_attention, int4_linear, small_batch_linear
    from opencodegen.model import CodeGenForCausalLM
    from opencodegen.quantize import quantize

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        config = CodeGenConfig.from_preset(preset)
        config.eos_token_id = min(config.eos_token_id, config.vocab_size - 1)
        CodeGenForCausalLM(config).save_pretrained(tmp)
        ours = load_model(tmp, device=device, dtype=dtype)[1]
        ref = transformers.CodeGenForCausalLM.from_pretrained(tmp, dtype=dtype).to(device).eval()
    vocab = ours.config.vocab_size
    prompt = torch.randint(0, min(vocab, 50000), (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    print(f"{preset}: {ours.num_parameters() / 1e6:.0f}M parameters, prompt {prompt_len} tokens, "
          f"{new} new tokens, {device_name} {args.dtype}, "
          f"{'' if on_gpu else f'{args.threads} threads, '}torch {torch.__version__}, transformers {transformers.__version__}")
    if not on_gpu:
        print(f"CPU kernels: small-batch linear {small_batch_linear.status()}, decode attention "
              f"{decode_attention.LIBRARY.status()}, int4 {int4_linear.LIBRARY.status()}")

    def hf_generate(budget: int, **kwargs) -> torch.Tensor:
        config = transformers.GenerationConfig(
            max_new_tokens=budget, min_new_tokens=budget, eos_token_id=None, pad_token_id=0, **kwargs
        )
        with torch.inference_mode():
            return ref.generate(input_ids=torch.tensor([prompt], device=device), generation_config=config)

    hf_greedy = dict(do_sample=False, num_beams=1)
    hf_sample = dict(do_sample=True, temperature=0.2, top_p=0.95, top_k=0, num_return_sequences=args.n)
    greedy = SamplingParams(temperature=0, max_new_tokens=new, ignore_eos=True)
    sample = SamplingParams(n=args.n, max_new_tokens=new, temperature=0.2, top_p=0.95, seed=0, ignore_eos=True)

    def our_generate(model: CodeGenForCausalLM, params: SamplingParams):
        return Generator(model).generate_ids([prompt], params)[0]

    # warm up both (first calls allocate and pick kernels)
    hf_generate(4, **hf_greedy)
    our_generate(ours, SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))

    modes = {}
    if not on_gpu and args.dtype == "fp32":
        modes["int8"] = quantize(copy.deepcopy(ours), "int8")
        if int4_linear.LIBRARY.functions() is not None:
            modes["int4"] = quantize(copy.deepcopy(ours), "int4")
    for name in ("bf16", "fp16"):
        if name != args.dtype and (on_gpu or name == "bf16"):
            modes[name] = copy.deepcopy(ours).to(DTYPES[name])
    for model in modes.values():  # warm-up
        our_generate(model, SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))

    one = SamplingParams(temperature=0, max_new_tokens=1, ignore_eos=True)
    runs = {  # row: (transformers' call, our call); the modes are compared with transformers' greedy
        "prefill": (lambda: hf_generate(1, **hf_greedy), lambda: our_generate(ours, one)),
        "greedy": (lambda: hf_generate(new, **hf_greedy), lambda: our_generate(ours, greedy)),
        "sample": (lambda: hf_generate(new, **hf_sample), lambda: our_generate(ours, sample)),
        **{name: (None, lambda m=model: our_generate(m, greedy)) for name, model in modes.items()},
    }
    seconds: dict[str, dict[str, list[float]]] = {row: {"transformers": [], "ours": []} for row in runs}
    bandwidths = []
    for _ in range(args.repeat):
        bandwidths.append(copy_bandwidth(device))
        for row, (theirs, our) in runs.items():
            seconds[row]["transformers"].append(timed(theirs, device) if theirs else seconds["greedy"]["transformers"][-1])
            seconds[row]["ours"].append(timed(our, device))
    bandwidth = max(bandwidths)
    weight_bytes = decode_weight_bytes(ours)
    bound = weight_bytes / bandwidth  # printed: the tightest of the rounds

    def per_round(row: str, rate: Callable[[float], float]) -> dict[str, list[float]]:
        return {side: [rate(t) for t in times] for side, times in seconds[row].items()}

    steps = {side: [(g - p) / (new - 1) for g, p in zip(seconds["greedy"][side], seconds["prefill"][side])]
             for side in ("transformers", "ours")}
    series = {
        "prefill s": per_round("prefill", lambda t: t),
        "greedy tokens/s": per_round("greedy", lambda t: new / t),
        "decode step ms": {side: [1e3 * v for v in values] for side, values in steps.items()},
        "step at % of bound": {  # each round against the bandwidth measured at its start
            side: [100 * weight_bytes / b / v for b, v in zip(bandwidths, values)]
            for side, values in steps.items()
        },
        f"n={args.n} tokens/s": per_round("sample", lambda t: args.n * new / t),
        **{f"{name} greedy tokens/s": per_round(name, lambda t: new / t) for name in modes},
    }
    lower_is_better = ("prefill s", "decode step ms")
    rows: dict[str, dict[str, float]] = {}
    for name, values in series.items():
        best = min if name in lower_is_better else max
        faster = (lambda t, o: t / o) if name in lower_is_better else (lambda t, o: o / t)
        rows[name] = {side: best(v) for side, v in values.items()}
        rows[name]["ratio"] = faster(rows[name]["transformers"], rows[name]["ours"])
        rows[name]["median_round_ratio"] = statistics.median(map(faster, values["transformers"], values["ours"]))

    # faster modes and their quality cost against our --dtype greedy (int8: CPU and fp32 only)
    reference_ids = our_generate(ours, greedy)[0].token_ids
    full = torch.tensor([prompt + reference_ids], device=device)
    with torch.inference_mode():
        fp32_logits = ours(full).logits.float()
    quality = {}
    for name, model in modes.items():
        ids = our_generate(model, greedy)[0].token_ids
        with torch.inference_mode():
            logits = model(full).logits.float()
        continuation = slice(prompt_len - 1, -1)  # the positions that predict the greedy tokens
        quality[name] = {
            "max_logit_error": (logits - fp32_logits).abs().max().item(),
            "fp32_logit_range": fp32_logits.abs().max().item(),
            "greedy_prefix_equal_to_fp32": next((i for i, (a, b) in enumerate(zip(ids, reference_ids)) if a != b), new),
            "top1_agreement_on_fp32_path": (logits[0, continuation].argmax(-1) == fp32_logits[0, continuation].argmax(-1))
            .float().mean().item(),
            "of": new,
        }

    print(f"\ncopy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write); decode reads "
          f"{weight_bytes / 1e9:.2f} GB of {args.dtype} weights per token -> bound {bound * 1e3:.1f} ms/token\n")
    print(f"| {'measure':<24} | {'transformers':>12} | {'opencodegen':>12} | {'ratio':>6} | {'per round':>9} |")
    print(f"|{'-' * 26}|{'-' * 14}|{'-' * 14}|{'-' * 8}|{'-' * 11}|")
    for name, r in rows.items():
        print(f"| {name:<24} | {r['transformers']:>12.2f} | {r['ours']:>12.2f} | {r['ratio']:>5.2f}x | "
              f"{r['median_round_ratio']:>8.2f}x |")
    print(f"\nratio: how many times faster opencodegen is (for '% of bound': ours / theirs), best against best "
          f"of {args.repeat} rounds; per round: the median of the {args.repeat} paired ratios")
    for name, q in quality.items():
        print(f"{name}: max |logit error| {q['max_logit_error']:.4f} ({args.dtype} logits up to {q['fp32_logit_range']:.1f}); "
              f"greedy equal to {args.dtype} for the first {q['greedy_prefix_equal_to_fp32']} of {q['of']} tokens; "
              f"same arg-max as {args.dtype} at {100 * q['top1_agreement_on_fp32_path']:.0f}% of the "
              f"{args.dtype} greedy positions")
    record(Recorder("bench_generate", args.json_out, gpu=device_name if on_gpu else None),
           {"preset": preset, "device": args.device, "dtype": args.dtype, **({} if on_gpu else {"threads": args.threads}),
            "prompt_len": prompt_len, "new_tokens": new}, args.n, args.repeat, rows, quality,
           {"copy bandwidth": (bandwidth / 1e9, "GB/s"), "decode bound": (bound * 1e3, "ms/token")})
    if args.json:
        args.json.write_text(json.dumps({"preset": preset, "prompt_len": prompt_len, "new_tokens": new,
                                         "threads": args.threads, "device": device_name,
                                         "dtype": args.dtype, "bandwidth": bandwidth, "bandwidths": bandwidths,
                                         "bound_s": bound, "seconds": seconds,
                                         "rows": rows, "quality": quality}, indent=2) + "\n")


def record(recorder: Recorder, setting: dict, n: int, repeat: int, rows: dict[str, dict[str, float]],
           quality: dict[str, dict[str, float]], machine: dict[str, tuple[float, str]]) -> None:
    """Append the printed figures as records: each row against transformers and its paired ratio, then
    the faster modes' quality against our model in --dtype."""
    def rounded(value: float) -> float:
        return float(f"{value:.4g}")

    best = over("best", repeat, "round")
    for name, (value, unit) in machine.items():
        recorder.add(name, rounded(value), unit, setting, statistic=best)
    for name, r in rows.items():
        metric, unit, extra = row_measure(name, n)
        recorder.add(metric, rounded(r["ours"]), unit, {**setting, **extra}, statistic=best,
                     reference="transformers", reference_value=rounded(r["transformers"]), ratio=rounded(r["ratio"]))
        recorder.add(f"{metric}: paired ratio", rounded(r["median_round_ratio"]), "×", {**setting, **extra},
                     statistic=over("median", repeat, "round"))
    dtype = setting["dtype"]
    for mode, q in quality.items():
        moded = {**setting, "weights": mode}
        recorder.add(f"max logit error vs {dtype}", rounded(q["max_logit_error"]), "", moded, note="random weights")
        recorder.add(f"greedy tokens equal to {dtype}", q["greedy_prefix_equal_to_fp32"], f"of {q['of']}", moded,
                     note="random weights")
        recorder.add(f"arg-max equal to {dtype}", rounded(100 * q["top1_agreement_on_fp32_path"]), "% of positions",
                     moded, note="random weights: near-ties")
    recorder.write()


def row_measure(name: str, n: int) -> tuple[str, str, dict]:
    """A printed row's metric, unit and the setting it adds."""
    fixed = {"prefill s": ("prefill", "s"), "decode step ms": ("decode step", "ms"),
             "step at % of bound": ("decode step at % of the copy-bandwidth bound", "%"),
             "greedy tokens/s": ("greedy", "tok/s"), f"n={n} tokens/s": (f"n={n} samples of one prompt", "tok/s")}
    if name in fixed:
        extra = {"n": n, "temperature": 0.2, "top_p": 0.95} if name.startswith("n=") else {}
        return *fixed[name], extra
    return "greedy", "tok/s", {"weights": name.removesuffix(" greedy tokens/s")}


if __name__ == "__main__":
    main()
