"""Correctness of the model, the generation engine and a training step on one device (e.g. a GPU).

    PYTHONPATH=src python benchmarks/gpu_check.py [--device cuda|cpu] [--json summary.json]

Runs on random weights of a small but non-trivial shape (4 layers, head_dim 64, rotary_dim 32,
vocab 4096), saved once and loaded by both opencodegen and transformers (the reference) on the
device, and prints one PASS/FAIL line per check with its numbers:
  logits-fp32        our logits vs transformers' on a left-padded batch of 2 prompts with an
                     attention mask (real positions only); TF32 is disabled, so fp32 is fp32
  logits-bf16/fp16   both implementations in half precision against transformers' fp32 logits:
                     ours may err at most 2x transformers' error + 1% of the logit range
  greedy-fp32        our engine's greedy ids (3 prompts in one call, 32 tokens, EOS ignored) equal
                     transformers' greedy generate, prompt by prompt
  kv-cache           our prefill + token-by-token decode with the KV cache (left-padded batch)
                     equals our full forward
  sampling-n8        n=8 shared-prefix sampling with a seed: the same ids twice, not all alike
  train-bf16         3 optimizer steps of opencodegen's Trainer (bf16 autocast, 2 micro-batches
                     per step) on in-memory data: finite losses, gradient norms and weights
Exit status 1 when any check fails. Checks are independent: an exception fails only its check.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from records import Recorder, add_json_out, is_number

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write a JSON summary here")
    add_json_out(parser, "gpu_check")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(min(torch.get_num_threads(), 4))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    import transformers

    from opencodegen.config import CodeGenConfig
    from opencodegen.model import CodeGenForCausalLM

    transformers.utils.logging.disable_progress_bar()
    print(f"device {name}, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = CodeGenForCausalLM(CodeGenConfig(**SHAPE))
        randomize(model, seed=0)
        model.save_pretrained(tmp)
        del model
        checks = Checks(Path(tmp), device)
        plan: list[tuple[str, Callable[[], tuple[bool, dict, str]]]] = [
            ("logits-fp32", checks.check_logits_fp32),
            *[(f"logits-{h}", lambda h=h: checks.check_logits_half(h)) for h in ("bf16", "fp16")],
            ("greedy-fp32", checks.check_greedy),
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
            print(f"{'PASS' if ok else 'FAIL'} {check:<12} {text} [{seconds:.1f}s]", flush=True)
            results.append({"check": check, "passed": ok, "seconds": seconds, **numbers})
    passed = all(r["passed"] for r in results)
    total = time.perf_counter() - started
    print(f"{sum(r['passed'] for r in results)}/{len(results)} checks passed in {total:.1f}s")
    recorder = Recorder("gpu_check", args.json_out, gpu=name if device.type == "cuda" else None)
    recorder.add("checks passed", sum(r["passed"] for r in results), f"of {len(results)}", {"device": args.device})
    for r in results:
        for key, value in r.items():
            if key not in ("passed", "seconds", "of") and is_number(value):
                recorder.add(f"{r['check']}: {key.replace('_', ' ')}", float(f"{value:.4g}"),
                             f"of {r['of']}" if "of" in r else "", {"device": args.device})
    recorder.write()
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__,
                                         "transformers": transformers.__version__, "passed": passed,
                                         "seconds": total, "checks": results}, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
