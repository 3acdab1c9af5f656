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
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from opencodegen.checkpoint import released_state_dict
from opencodegen.config import CodeGenConfig
from opencodegen.data.dataset import InMemorySequences
from opencodegen.model import CodeGenForCausalLM
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
    for precision, r in results.items():
        ours_tps = tokens / statistics.median(r["ours_s"])
        ref_tps = tokens / statistics.median(r["ref_s"])
        speedup = statistics.median(ref_s / ours_s for ours_s, ref_s in zip(r["ours_s"], r["ref_s"]))
        summary["runs"][precision] = {"tokens_per_s": ours_tps, "reference_tokens_per_s": ref_tps,
                                      "speedup": speedup, **r}
        print(f"{'opencodegen ' + precision:<28}{ours_tps:>10.1f}{ref_tps:>14.1f}{speedup:>9.2f}x")
    ref_losses = results["bf16"]["ref_loss"]  # the reference trajectory from the shared initial weights
    print(f"\n{'step':>4}{'transformers fp32':>19}{'ours fp32':>11}{'ours bf16':>11}")
    for i in range(total):
        print(f"{i + 1:>4}{ref_losses[i]:>19.4f}{results['fp32']['ours_loss'][i]:>11.4f}"
              f"{results['bf16']['ours_loss'][i]:>11.4f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(ref_losses, results, out / "bench_train.png", args)
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
