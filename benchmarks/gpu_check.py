"""Issue 22's GPU Must-show and the model / engine / training checks, in one run of at most 8 minutes.

    PYTHONPATH=src python benchmarks/gpu_check.py [--device cuda|cpu] [--json summary.json]
    PYTHONPATH=src python benchmarks/gpu_check.py --smoke --device cpu   # tiny sizes: that it all runs

Part 1, correctness, on random weights of a small but non-trivial shape (4 layers, head_dim 64,
rotary_dim 32, vocab 4096), saved once and loaded by both opencodegen and transformers (the
reference) on the device; one PASS/FAIL line per check with its numbers:
  logits-fp32        our logits vs transformers' on a left-padded batch of 2 prompts with an
                     attention mask (real positions only); TF32 is disabled, so fp32 is fp32
  logits-bf16/fp16   both implementations in half precision against transformers' fp32 logits:
                     ours may err at most 2x transformers' error + 1% of the logit range
  greedy-fp32        our engine's greedy ids (3 prompts in one call, 32 tokens, EOS ignored) equal
                     transformers' greedy generate, prompt by prompt
  greedy-eager-*     our engine's greedy ids (the 3 prompts in one call) equal a plain eager loop
                     (one prompt at a time: the model's forward with its KV cache, arg-max), fp32
                     and bf16 (fp16 on CUDA too): the engine's fast paths change no token
  kv-cache           our prefill + token-by-token decode with the KV cache (left-padded batch)
                     equals our full forward
  sampling-n8        n=8 shared-prefix sampling with a seed: the same ids twice, not all alike
  train-bf16         3 optimizer steps of opencodegen's Trainer (bf16 autocast, 2 micro-batches
                     per step) on in-memory data: finite losses, gradient norms and weights
Part 2, throughput (benchmarks/bench_eval_throughput.py: HumanEval prompts, T 0.8, the human-eval
protocol's stops, 128-token budget, ours vs transformers' generate in paired rounds), bf16 on CUDA:
  350M and 2B random weights at n = 200 and n = 8 on a slice of the problems (PLAN),
  with the goals of issue 22 printed as met or missed: >= 3x transformers at n = 200, >= 1x at n = 8.
Part 3, the grid: 350M random weights, all 164 problems x 3 temperatures (0.2 0.6 0.8) x 200
  samples, 128-token budget, through humaneval.generate_samples in slices of problems until its
  time share is spent; the time of the whole grid is measured, or projected from the slices done
  (goal: under 10 minutes; sampling only, the programs are not run).
Every section has a share of --budget-s and starts only when MIN_SECTION_S of the budget is left;
a section starts a next round or slice only when one as long as the last still fits its share
(the grid then projects its whole time from the slices done). --smoke: the
embedded demo model and a random "base"-preset model instead of 350M / 2B, a few problems,
samples and tokens (on the CPU: the test suite runs it).
Exit status 1 when a check fails (goals are reported, not enforced). Checks are independent: an
exception fails only its check.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from records import Recorder, add_json_out

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHAPE = dict(n_layer=4, n_embd=256, n_head=4, rotary_dim=32, vocab_size=4096, n_positions=512, n_ctx=512,
             eos_token_id=4095, bos_token_id=4095)
FP32_TOLERANCE = 1e-4  # of the logit range (about 1e-3 absolute here)
NEW_TOKENS = 32


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Distinct values everywhere (biases and norms too) and peaky logits, so greedy has no near-ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1:
                p.copy_(noise * 0.1 + float(".ln_" in f".{name}" and name.endswith("weight")))
            else:
                p.copy_(noise / math.sqrt(p.shape[1]) * (4.0 if name.startswith("lm_head") else 1.0))


def left_padded(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (padded with 0) and attention mask [B, longest]."""
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)


class Checks:
    """Holds the models and data of the run; each `check_*` method returns (passed, numbers, text)."""

    def __init__(self, directory: Path, device: torch.device) -> None:
        import transformers

        from opencodegen.checkpoint import load_model

        self.transformers, self.load_model = transformers, load_model
        self.directory, self.device = directory, device
        gen = torch.Generator().manual_seed(1)
        vocab = SHAPE["vocab_size"] - 1  # never the EOS id
        self.prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (7, 20, 45)]
        self.ours = self.load("ours", "fp32")
        self.ref = self.load("transformers", "fp32")

    def load(self, which: str, dtype: str) -> torch.nn.Module:
        if which == "ours":
            return self.load_model(self.directory, device=self.device, dtype=DTYPES[dtype])[1]
        model = self.transformers.CodeGenForCausalLM.from_pretrained(self.directory, dtype=DTYPES[dtype])
        return model.to(self.device).eval()

    @torch.inference_mode()
    def batch_logits(self, model: torch.nn.Module) -> torch.Tensor:
        """fp32 logits at the real positions of the left-padded batch of prompts 1 and 2, [N, vocab]."""
        ids, mask = left_padded(self.prompts[1:], self.device)
        return model(input_ids=ids, attention_mask=mask).logits.float()[mask.bool()]

    def check_logits_fp32(self) -> tuple[bool, dict, str]:
        ours, ref = self.batch_logits(self.ours), self.batch_logits(self.ref)
        err, scale = (ours - ref).abs().max().item(), ref.abs().max().item()
        return (err <= FP32_TOLERANCE * scale, {"max_abs_diff": err, "logit_range": scale},
                f"max|Δ| {err:.2e} (logits up to {scale:.1f}; tolerance {FP32_TOLERANCE * scale:.1e})")

    def check_logits_half(self, dtype: str) -> tuple[bool, dict, str]:
        reference = self.batch_logits(self.ref)
        scale = reference.abs().max().item()
        errors = {}
        for which in ("ours", "transformers"):
            model = self.load(which, dtype)
            errors[which] = (self.batch_logits(model) - reference).abs().max().item()
            del model
        ok = math.isfinite(errors["ours"]) and errors["ours"] <= 2 * errors["transformers"] + 0.01 * scale
        numbers = {"ours_max_abs_err": errors["ours"], "transformers_max_abs_err": errors["transformers"],
                   "fp32_logit_range": scale}
        return (ok, numbers, f"error vs transformers fp32: ours {errors['ours']:.3f} "
                f"({100 * errors['ours'] / scale:.2f}% of range {scale:.1f}), transformers "
                f"{errors['transformers']:.3f} ({100 * errors['transformers'] / scale:.2f}%)")

    def check_greedy(self) -> tuple[bool, dict, str]:
        from opencodegen.generation import Generator, SamplingParams

        params = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)
        got = [c.token_ids for [c] in Generator(self.ours).generate_ids(self.prompts, params)]
        config = self.transformers.GenerationConfig(
            do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, eos_token_id=None,
            pad_token_id=0, top_k=None, top_p=None, temperature=None, repetition_penalty=None,
        )
        expected = []
        with torch.inference_mode():
            for p in self.prompts:
                out = self.ref.generate(input_ids=torch.tensor([p], device=self.device), generation_config=config)
                expected.append(out[0, len(p):].tolist())
        same = [next((i for i, (a, b) in enumerate(zip(g, e)) if a != b), min(len(g), len(e))) if g != e else len(e)
                for g, e in zip(got, expected)]
        ok = got == expected and all(len(g) == NEW_TOKENS for g in got)
        return ok, {"equal_prefix_tokens": same, "of": NEW_TOKENS}, \
            f"equal tokens before the first difference: {same} of {NEW_TOKENS} per prompt"

    @torch.inference_mode()
    def eager_greedy(self, model: torch.nn.Module, prompt: list[int]) -> list[int]:
        """NEW_TOKENS greedy ids of one prompt by a plain loop over the model's forward with its KV cache."""
        cache = model.new_cache(1, len(prompt) + NEW_TOKENS)
        ids = torch.tensor([prompt], device=self.device)
        mask = torch.ones(1, len(prompt) + NEW_TOKENS, dtype=torch.long, device=self.device)
        out: list[int] = []
        while True:
            logits = model(ids, attention_mask=mask[:, :len(prompt) + len(out)], past_key_values=cache).logits
            out.append(int(logits[0, -1].argmax()))
            if len(out) == NEW_TOKENS:
                return out
            ids = torch.tensor([[out[-1]]], device=self.device)

    def check_greedy_eager(self, dtype: str) -> tuple[bool, dict, str]:
        from opencodegen.generation import Generator, SamplingParams

        model = self.ours if dtype == "fp32" else self.load("ours", dtype)
        params = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)
        got = [c.token_ids for [c] in Generator(model).generate_ids(self.prompts, params)]
        expected = [self.eager_greedy(model, p) for p in self.prompts]
        same = [next((i for i, (a, b) in enumerate(zip(g, e)) if a != b), min(len(g), len(e))) for g, e in
                zip(got, expected)]
        return got == expected, {"equal_prefix_tokens": same, "of": NEW_TOKENS}, \
            f"engine (3 prompts, one call) vs eager loop: equal tokens before the first difference {same} of {NEW_TOKENS}"

    @torch.inference_mode()
    def check_kv_cache(self) -> tuple[bool, dict, str]:
        ids, mask = left_padded(self.prompts[1:], self.device)
        full = self.ours(input_ids=ids, attention_mask=mask).logits.float()
        width, steps = ids.shape[1], 8
        start = width - steps
        cache = self.ours.new_cache(len(ids), width)
        pieces = [self.ours(ids[:, :start], attention_mask=mask[:, :start], past_key_values=cache).logits]
        for t in range(start, width):
            pieces.append(self.ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache).logits)
        cached = torch.cat(pieces, dim=1).float()
        real = mask.bool()
        err, scale = (cached[real] - full[real]).abs().max().item(), full[real].abs().max().item()
        decode_err = (cached[:, start:] - full[:, start:]).abs().max().item()
        return (err <= FP32_TOLERANCE * scale, {"max_abs_diff": err, "decode_max_abs_diff": decode_err,
                                                "logit_range": scale},
                f"prefill {start} + {steps} cached steps vs full forward: max|Δ| {err:.2e} "
                f"(decode steps {decode_err:.2e}; logits up to {scale:.1f})")

    def check_sampling(self) -> tuple[bool, dict, str]:
        from opencodegen.generation import Generator, SamplingParams

        params = SamplingParams(n=8, max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=0.95, seed=1234,
                                ignore_eos=True)
        runs = [[c.token_ids for c in Generator(self.ours).generate_ids([self.prompts[1]], params)[0]]
                for _ in range(2)]
        distinct = len({tuple(s) for s in runs[0]})
        ok = runs[0] == runs[1] and distinct > 1 and all(len(s) == NEW_TOKENS for s in runs[0])
        return ok, {"reproducible": runs[0] == runs[1], "distinct_samples": distinct}, \
            f"same seed twice -> {'same' if runs[0] == runs[1] else 'DIFFERENT'} ids; {distinct} distinct of 8"

    def check_training(self) -> tuple[bool, dict, str]:
        from opencodegen.data.dataset import InMemorySequences
        from opencodegen.training import distributed as dist_utils
        from opencodegen.training.config import TrainConfig
        from opencodegen.training.trainer import Trainer

        rows = torch.randint(0, 4096, (8, 129), generator=torch.Generator().manual_seed(2))
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
            config = TrainConfig(model="small", batch_size=4, micro_batch_size=2, lr=1e-3, warmup_steps=1, max_steps=3,
                                 precision="bf16", device=self.device.type, strategy="none", eval_every=0,
                                 save_every=0, export_final=False, tensorboard=False, out_dir=out)
            trainer = Trainer(config, train_dataset=InMemorySequences(rows))
            try:
                before = [p.detach().clone() for p in trainer.raw_model.parameters()]
                stats = []
                for step in range(config.max_steps):
                    trainer.schedule.apply(trainer.optimizer, step)
                    stats.append(trainer.train_step(next(trainer.train_iter)).tolist())
                after = list(trainer.raw_model.parameters())
                finite_weights = all(bool(p.isfinite().all()) for p in after)
                moved = any(not torch.equal(a, b) for a, b in zip(after, before))
                on_device = after[0].device.type == self.device.type
            finally:
                if trainer.metrics is not None:
                    trainer.metrics.close()
                dist_utils.teardown(trainer.env)
        losses, norms = [s[1] for s in stats], [s[2] for s in stats]
        ok = all(map(math.isfinite, losses + norms)) and finite_weights and moved and on_device
        return ok, {"losses": losses, "grad_norms": norms, "weights_changed": moved, "weights_finite": finite_weights}, \
            f"cross-entropy {' -> '.join(f'{x:.3f}' for x in losses)}; grad norms " \
            f"{', '.join(f'{x:.2f}' for x in norms)}; weights changed {moved}, finite {finite_weights}"


BUDGET = {False: 128, True: 8}  # new tokens per sample in parts 2 and 3 (by --smoke)
GRID_TEMPERATURES = (0.2, 0.6, 0.8)
#: Parts 2 and 3 in the order they run: (shape, n, problems, seconds of the budget); n "grid" is part 3,
#: the grid of n = GRID_N[smoke] samples at each of GRID_TEMPERATURES, in slices of GRID_SLICE[smoke] problems.
PLAN = (("350M", 200, 8, 60), ("350M", 8, 16, 40), ("350M", "grid", 164, 90), ("2B", 200, 2, 70), ("2B", 8, 8, 45))
SMOKE_PLAN = (("base", 3, 2, 60), ("base", 2, 2, 60), ("base", "grid", 2, 60), ("demo", 3, 2, 60), ("demo", 2, 2, 60))
GRID_N = {False: 200, True: 2}
GRID_SLICE = {False: 4, True: 1}
GOALS = {200: 3.0, 8: 1.0}  # issue 22: ours / transformers samples/s at n = 200 and n = 8
MIN_SECTION_S = 40  # a section starts only with this much of the budget left


def run_checks(device: torch.device) -> list[dict]:
    """Part 1: the correctness checks, one line each."""
    import transformers

    from opencodegen.config import CodeGenConfig
    from opencodegen.model import CodeGenForCausalLM

    transformers.utils.logging.disable_progress_bar()
    print(f"device {device_name(device)}, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = CodeGenForCausalLM(CodeGenConfig(**SHAPE))
        randomize(model, seed=0)
        model.save_pretrained(tmp)
        del model
        checks = Checks(Path(tmp), device)
        halves = ("bf16", "fp16") if device.type == "cuda" else ("bf16",)
        plan: list[tuple[str, Callable[[], tuple[bool, dict, str]]]] = [
            ("logits-fp32", checks.check_logits_fp32),
            *[(f"logits-{h}", lambda h=h: checks.check_logits_half(h)) for h in ("bf16", "fp16")],
            ("greedy-fp32", checks.check_greedy),
            *[(f"greedy-eager-{d}", lambda d=d: checks.check_greedy_eager(d)) for d in ("fp32", *halves)],
            ("kv-cache", checks.check_kv_cache),
            ("sampling-n8", checks.check_sampling),
            ("train-bf16", checks.check_training),
        ]
        for check, fn in plan:
            t0 = time.perf_counter()
            try:
                ok, numbers, text = fn()
            except Exception as exc:  # one broken check must not hide the others
                ok, numbers, text = False, {"error": repr(exc)}, f"raised {exc!r}"
                traceback.print_exc(file=sys.stderr)
            seconds = time.perf_counter() - t0
            print(f"{'PASS' if ok else 'FAIL'} {check:<16} {text} [{seconds:.1f}s]", flush=True)
            results.append({"check": check, "passed": ok, "seconds": seconds, **numbers})
    return results


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_throughput(models, n: int, problems: int, budget: int, deadline: float) -> dict:
    """Part 2, one setting: ours vs transformers in paired rounds, with issue 22's goal for its n."""
    import bench_eval_throughput as bench

    work = bench.Workload(n=n, temperature=0.8, max_new_tokens=budget)
    lines, records, result = bench.benchmark(models, problems, work, rounds=2, deadline=deadline)
    print("\n".join(lines), flush=True)
    speedup = statistics.median(result.ratios("samples_per_s"))
    goal = GOALS.get(n)
    if goal is not None:
        print(f"GOAL {'MET' if speedup >= goal else 'MISSED'} n={n}: {speedup:.2f}x transformers' samples/s "
              f"(goal >= {goal}x)", flush=True)
    return {"shape": models.shape, "n": n, "problems": problems, "speedup": speedup, "goal": goal, "records": records}


def run_grid(models, count: int, n: int, slice_problems: int, budget: int, deadline: float) -> dict:
    """Part 3: the HumanEval grid through generate_samples, slice by slice until `deadline`."""
    import bench_eval_throughput as bench
    from bench_generate import synchronize

    from opencodegen.evaluation import humaneval as he
    from opencodegen.evaluation import planning
    from opencodegen.evaluation.protocols import HUMAN_EVAL
    from opencodegen.generation import Generator
    from opencodegen.io import ResultStore

    problems, source = bench.workload_problems(count)
    generator = Generator(models.ours, models.tokenizer)
    temperatures = list(GRID_TEMPERATURES)
    planning.humaneval_batch(generator, [p.prompt for p in problems], n, temperatures,
                             budget, None, world=1, show=False)
    done, started = 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "samples.jsonl", he.KEY)
        for start in range(0, len(problems), slice_problems):
            part, slice_started = problems[start:start + slice_problems], time.monotonic()
            he.generate_samples(generator, part, store, n=n, temperatures=temperatures,
                                top_p=HUMAN_EVAL.top_p, max_new_tokens=budget, seed=0,
                                progress=False, protocol=HUMAN_EVAL, top_k=HUMAN_EVAL.top_k)
            synchronize(models.device)
            done += len(part)
            if 2 * time.monotonic() - slice_started > deadline:  # the next slice, as long as this one, would not fit
                break
        samples = len(store.records)
    elapsed = time.perf_counter() - started
    whole = elapsed * len(problems) / done
    measured = done == len(problems)
    print(f"grid {models.shape} ({source.split()[0]}): {done}/{len(problems)} problems x {len(temperatures)} "
          f"temperatures x {n} samples = {samples} samples in {elapsed:.1f}s; whole grid "
          f"{'measured' if measured else 'projected'} {whole:.0f}s ({whole / 60:.1f} min)", flush=True)
    print(f"GOAL {'MET' if whole < 600 else 'MISSED'} grid: {whole / 60:.1f} min (goal < 10 min)", flush=True)
    return {"shape": models.shape, "problems_done": done, "problems": len(problems), "samples": samples,
            "seconds": elapsed, "whole_grid_s": whole, "measured": measured}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write a JSON summary here")
    parser.add_argument("--smoke", action="store_true", help="tiny models and workloads (a CPU test of this script)")
    add_json_out(parser, "gpu_check")
    parser.add_argument("--budget-s", type=float, default=420,
                        help="seconds for the whole run (default 420: a round or slice under way may run past it)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    started = time.perf_counter()
    end = time.monotonic() + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(1 if args.smoke else min(torch.get_num_threads(), 4))
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_eval_throughput as bench

    checks = run_checks(device)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    throughput, grids, skipped, models = [], [], [], None
    for shape, n, problems, share in SMOKE_PLAN if args.smoke else PLAN:
        if end - time.monotonic() < MIN_SECTION_S:
            skipped.append(f"{shape} n={n}")
            print(f"SKIPPED {shape} n={n}: the time budget is spent", flush=True)
            continue
        if models is None or models.shape != shape:
            models = None  # the previous shape's memory is free before the next one is built
            if device.type == "cuda":
                torch.cuda.empty_cache()
            t0 = time.perf_counter()
            models = bench.load_models(shape, device, dtype)
            print(f"{shape}: {models.ours.num_parameters() / 1e6:.1f}M parameters, {dtype}, built in "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
        deadline = min(end, time.monotonic() + share)
        if n == "grid":
            grids.append(run_grid(models, problems, GRID_N[args.smoke], GRID_SLICE[args.smoke], BUDGET[args.smoke],
                                  deadline))
        else:
            throughput.append(run_throughput(models, n, problems, BUDGET[args.smoke], deadline))
    passed = all(r["passed"] for r in checks)
    total = time.perf_counter() - started
    print(f"{sum(r['passed'] for r in checks)}/{len(checks)} checks passed; {len(throughput)} throughput settings, "
          f"{len(grids)} grid run{'s' if len(grids) != 1 else ''}{'; skipped: ' + ', '.join(skipped) if skipped else ''}"
          f"; {total:.1f}s in all")
    recorder = Recorder("gpu_check", args.json_out, gpu=device_name(device) if device.type == "cuda" else None)
    recorder.add("checks passed", sum(r["passed"] for r in checks), f"of {len(checks)}", {"device": args.device})
    for setting in throughput:
        recorder.records.extend(setting["records"])
    recorder.write()
    if args.json:
        import transformers

        args.json.write_text(json.dumps({"device": device_name(device), "torch": torch.__version__,
                                         "transformers": transformers.__version__, "passed": passed,
                                         "seconds": total, "checks": checks, "throughput": throughput,
                                         "grid": grids, "skipped": skipped}, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
