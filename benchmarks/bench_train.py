"""Training-step speed on CPU: opencodegen's trainer vs transformers' CodeGenForCausalLM + plain AdamW.

Both train the same weights on the same batches with the same threads. The reference loop is
what a user writes by hand: fp32 forward, cross-entropy, backward, clip_grad_norm_(1.0), AdamW.
Ours is `Trainer.train_step` (CodeGen's objective with z-loss, AdamW with decay on matrices,
clip 1.0) in its default CPU precision (bf16 autocast over fp32 master weights) and in fp32.
Steps of ours and of the reference alternate, so both see the same machine load; the ratio
is the median of the per-step ratios. Every step trains on the same batch (source bytes of
the standard library as token ids), so the loss curves of the three runs fall smoothly and
can be compared side by side (bf16 should track fp32); they are written as JSON and PNG.

    python benchmarks/bench_train.py --steps 3            # 350M shape, batch 2 x 256, 2 threads

`--mode lora` compares LoRA with full fine-tuning of the same weights instead (both our trainer,
bf16 autocast): steps of the two alternate on the same batch (paired tokens/s), and each mode
then runs alone in a child process for its peak memory (peak RSS on CPU, peak allocated on a
GPU) and its training state (weights + gradients + optimizer state, counted from the tensors):

    python benchmarks/bench_train.py --mode lora --steps 3 [--lora-r 16] [--base-dtype bf16]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from records import Recorder, add_json_out, over

from opencodegen import default_model
from opencodegen.checkpoint.hf import released_state_dict
from opencodegen.config import CodeGenConfig
from opencodegen.data.dataset import InMemorySequences
from opencodegen.model import CodeGenForCausalLM
from opencodegen.training.checkpointing import copy_tokenizer_files
from opencodegen.training.config import TrainConfig
from opencodegen.training.trainer import Trainer


def stdlib_rows(count: int, seq_len: int) -> torch.Tensor:
    """`count` rows of seq_len + 1 token ids: the bytes of standard-library sources (ids < 256)."""
    need = count * (seq_len + 1)
    data = bytearray()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data += path.read_bytes()
        if len(data) >= need:
            break
    return torch.tensor(list(data[:need]), dtype=torch.long).view(count, seq_len + 1)


def reference_model(state: dict[str, torch.Tensor], config: CodeGenConfig):
    import transformers

    hf_config = transformers.CodeGenConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})
    model = transformers.CodeGenForCausalLM(hf_config)
    model.load_state_dict(state, strict=True)
    return model.train()


def reference_step(model, optimizer, batch: torch.Tensor) -> float:
    logits = model(input_ids=batch[:, :-1]).logits
    loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def our_trainer(args, precision: str, rows: torch.Tensor, initial: dict[str, torch.Tensor], out_dir: str) -> Trainer:
    config = TrainConfig(
        model=args.preset, batch_size=args.batch, micro_batch_size=args.batch, precision=precision, lr=args.lr,
        warmup_steps=0, min_lr_ratio=1.0, max_steps=1000, threads=args.threads, eval_every=0, save_every=0,
        tensorboard=False, export_final=False, shuffle=False, out_dir=out_dir,
    )
    trainer = Trainer(config, train_dataset=InMemorySequences(rows))
    trainer.raw_model.load_state_dict(initial)
    return trainer


def alternate(trainer: Trainer, ref, ref_opt, rows: torch.Tensor, args) -> dict[str, list[float]]:
    """Alternate one step of ours and one of the reference on the batch `rows`; times and losses."""
    out: dict[str, list[float]] = {"ours_s": [], "ref_s": [], "ours_loss": [], "ref_loss": []}
    for i in range(args.warmup + args.steps):
        seconds, metrics = timed(lambda b: trainer.train_step(b).tolist(), rows)
        ref_seconds, ref_loss = timed(reference_step, ref, ref_opt, rows)
        print(f"  step {i + 1}: ours {seconds:6.2f}s loss {metrics[1]:.4f} | transformers {ref_seconds:6.2f}s "
              f"loss {ref_loss:.4f}" + ("  (warm-up)" if i < args.warmup else ""), flush=True)
        out["ours_loss"].append(metrics[1])
        out["ref_loss"].append(ref_loss)
        if i >= args.warmup:
            out["ours_s"].append(seconds)
            out["ref_s"].append(ref_seconds)
    return out


def finetune_trainer(args, base_dir: str, lora: bool, rows: torch.Tensor, out_dir: str) -> Trainer:
    """Our trainer fine-tuning the weights in `base_dir`: fully, or with LoRA on every block's linear layers."""
    settings = {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0, "base_dtype": args.base_dtype}
    config = TrainConfig(
        init_from=base_dir, batch_size=args.batch, micro_batch_size=args.batch, lr=args.lr, warmup_steps=0,
        min_lr_ratio=1.0, max_steps=1000, threads=args.threads, eval_every=0, save_every=0, tensorboard=False,
        export_final=False, shuffle=False, out_dir=out_dir, lora=settings if lora else None,
    )
    return Trainer(config, train_dataset=InMemorySequences(rows))


def state_bytes(trainer: Trainer) -> int:
    """Bytes of the training state: parameters, their gradients and the optimizer's tensors."""
    params = list(trainer.raw_model.parameters())
    total = sum(p.numel() * p.element_size() for p in params)
    total += sum(p.numel() * p.element_size() for p in params if p.requires_grad)  # gradients
    for state in trainer.optimizer.state.values():
        total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return total


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM (Linux), which starts afresh at exec,
    unlike ru_maxrss, which a child inherits from the parent it was forked from."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(args) -> None:
    """One mode alone (`--child full|lora`): two steps, then its peak memory and state size as JSON."""
    rows = stdlib_rows(args.batch, args.seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = finetune_trainer(args, args.base_dir, args.child == "lora", rows, tmp)
        device = trainer.env.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            trainer.train_step(rows).tolist()
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
        trainable = sum(p.numel() for p in trainer.raw_model.parameters() if p.requires_grad)
        print(json.dumps({"peak_bytes": peak, "peak_kind": "cuda allocated" if device.type == "cuda" else "RSS",
                          "state_bytes": state_bytes(trainer), "trainable": trainable}))


def lora_vs_full(args) -> None:
    """Paired tokens/s of LoRA and full fine-tuning, then each mode's peak memory in a child process."""
    config = CodeGenConfig.from_preset(args.preset)
    rows = stdlib_rows(args.batch, args.seq_len)
    tokens = args.batch * args.seq_len
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = f"{tmp}/base"
        CodeGenForCausalLM(config).save_pretrained(base_dir)
        copy_tokenizer_files(default_model.DIRECTORY, Path(base_dir))  # any tokenizer: the batch is byte ids
        print(f"{args.preset}: {config.num_parameters() / 1e6:.0f}M parameters, batch {args.batch} x {args.seq_len}, "
              f"{args.threads} threads, LoRA r={args.lora_r} on qkv/out/fc_in/fc_out, base {args.base_dtype}, "
              f"torch {torch.__version__}")
        trainers = {mode: finetune_trainer(args, base_dir, mode == "lora", rows, f"{tmp}/{mode}")
                    for mode in ("full", "lora")}
        seconds: dict[str, list[float]] = {"full": [], "lora": []}
        for i in range(args.warmup + args.steps):
            line = []
            for mode, trainer in trainers.items():
                elapsed, metrics = timed(lambda b, t=trainer: t.train_step(b).tolist(), rows)
                line.append(f"{mode} {elapsed:6.2f}s loss {metrics[1]:.4f}")
                if i >= args.warmup:
                    seconds[mode].append(elapsed)
            print(f"  step {i + 1}: " + " | ".join(line) + ("  (warm-up)" if i < args.warmup else ""), flush=True)
        del trainers
        gc.collect()
        memory = {}
        for mode in ("full", "lora"):
            child = subprocess.run([sys.executable, __file__, "--child", mode, "--base-dir", base_dir,
                                    *sys.argv[1:]], capture_output=True, text=True, check=True)
            memory[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    speedup = statistics.median(f / lo for f, lo in zip(seconds["full"], seconds["lora"]))
    print(f"\n{'mode':<6}{'tokens/s':>10}{'trainable':>12}{'train state':>13}{'peak ' + memory['full']['peak_kind']:>14}")
    for mode in ("full", "lora"):
        m = memory[mode]
        print(f"{mode:<6}{tokens / statistics.median(seconds[mode]):>10.1f}{m['trainable'] / 1e6:>11.2f}M"
              f"{m['state_bytes'] / 2**30:>11.2f} GiB{m['peak_bytes'] / 2**30:>10.2f} GiB")
    print(f"LoRA / full tokens/s: {speedup:.2f}x (median of per-step ratios)")
    recorder = Recorder("bench_train", args.json_out)
    setting = {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len, "threads": args.threads,
               "lora_r": args.lora_r, "base_dtype": args.base_dtype}
    recorder.add("LoRA training throughput", round(tokens / statistics.median(seconds["lora"]), 1), "tok/s", setting,
                 statistic=over("median", args.steps, "step") + "; ratio: median of per-step ratios",
                 reference="full fine-tuning", reference_value=round(tokens / statistics.median(seconds["full"]), 1),
                 ratio=round(speedup, 3))
    for what, key in ((f"peak {memory['lora']['peak_kind']}", "peak_bytes"), ("training state", "state_bytes")):
        recorder.add(f"LoRA {what}", round(memory["lora"][key] / 2**30, 3), "GiB", setting,
                     statistic="two steps alone" if key == "peak_bytes" else None, reference="full fine-tuning",
                     reference_value=round(memory["full"][key] / 2**30, 3),
                     ratio=round(memory["full"][key] / memory["lora"][key], 3))
    recorder.write()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len, "threads": args.threads,
               "lora_r": args.lora_r, "base_dtype": args.base_dtype, "seconds": seconds, "memory": memory,
               "lora_speedup": speedup, "torch": torch.__version__}
    (out / "bench_train_lora.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'bench_train_lora.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="codegen-350M-mono")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per comparison")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--out", default="runs/bench_train", help="directory for bench_train.json and .png")
    parser.add_argument("--mode", choices=("reference", "lora"), default="reference",
                        help="reference: ours vs transformers (default); lora: LoRA vs full fine-tuning")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--base-dtype", choices=("fp32", "bf16", "int8"), default="bf16",
                        help="how LoRA holds the frozen base (default: bf16)")
    add_json_out(parser, "bench_train")
    parser.add_argument("--child", choices=("full", "lora"), help=argparse.SUPPRESS)
    parser.add_argument("--base-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return memory_child(args)
    if args.mode == "lora":
        return lora_vs_full(args)
    total = args.warmup + args.steps
    rows = stdlib_rows(args.batch, args.seq_len)
    tokens = args.batch * args.seq_len

    config = CodeGenConfig.from_preset(args.preset)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        initial_model = CodeGenForCausalLM(config)
        initial = {k: v.clone() for k, v in initial_model.state_dict().items()}
        ref = reference_model(released_state_dict(initial_model), config)
        del initial_model
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=args.lr, weight_decay=0.1)
        print(f"{args.preset}: {config.num_parameters() / 1e6:.0f}M parameters, batch {args.batch} x {args.seq_len}, "
              f"{args.threads} threads, torch {torch.__version__}")
        results = {}
        for precision in ("bf16", "fp32"):
            print(f"opencodegen {precision} vs transformers fp32:")
            trainer = our_trainer(args, precision, rows, initial, f"{tmp}/{precision}")
            results[precision] = alternate(trainer, ref, ref_opt, rows, args)
            del trainer
            gc.collect()

    summary = {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len, "threads": args.threads,
               "steps": args.steps, "torch": torch.__version__, "runs": {}}
    print(f"\n{'run':<28}{'tokens/s':>10}{'ref tokens/s':>14}{'speed-up':>10}")
    recorder = Recorder("bench_train", args.json_out)
    for precision, r in results.items():
        ours_tps = tokens / statistics.median(r["ours_s"])
        ref_tps = tokens / statistics.median(r["ref_s"])
        speedup = statistics.median(ref_s / ours_s for ours_s, ref_s in zip(r["ours_s"], r["ref_s"]))
        summary["runs"][precision] = {"tokens_per_s": ours_tps, "reference_tokens_per_s": ref_tps,
                                      "speedup": speedup, **r}
        print(f"{'opencodegen ' + precision:<28}{ours_tps:>10.1f}{ref_tps:>14.1f}{speedup:>9.2f}x")
        recorder.add("training throughput", round(ours_tps, 1), "tok/s",
                     {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len, "threads": args.threads,
                      "precision": "bf16 autocast" if precision == "bf16" else precision},
                     statistic=over("median", args.steps, "step") + "; ratio: median of per-step ratios",
                     reference="transformers + AdamW fp32", reference_value=round(ref_tps, 1), ratio=round(speedup, 3))
    ref_losses = results["bf16"]["ref_loss"]  # the reference trajectory from the shared initial weights
    print(f"\n{'step':>4}{'transformers fp32':>19}{'ours fp32':>11}{'ours bf16':>11}")
    for i in range(total):
        print(f"{i + 1:>4}{ref_losses[i]:>19.4f}{results['fp32']['ours_loss'][i]:>11.4f}"
              f"{results['bf16']['ours_loss'][i]:>11.4f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(ref_losses, results, out / "bench_train.png", args)
    recorder.write()
    print(f"\nwrote {out / 'bench_train.json'} and {out / 'bench_train.png'}")


def plot(ref_losses: list[float], results: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = range(1, len(ref_losses) + 1)
    ax.plot(steps, ref_losses, "k-o", label="transformers fp32 (plain AdamW)")
    ax.plot(steps, results["fp32"]["ours_loss"], "b--s", label="opencodegen fp32")
    ax.plot(steps, results["bf16"]["ours_loss"], "r:^", label="opencodegen bf16 autocast")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"{args.preset}, batch {args.batch} x {args.seq_len}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
