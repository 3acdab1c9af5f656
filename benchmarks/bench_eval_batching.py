"""HumanEval sampling throughput of two source trees on the embedded demo model (old vs new engine).

    python benchmarks/bench_eval_batching.py --old /work/main/src [--new src] [--problems 20] [--n 20]
        [--max-new-tokens 384] [--rounds 3] [--threads 2] [--json out.json]

Each round runs `humaneval.generate_samples` once with each tree (order alternating between rounds),
in a fresh process whose PYTHONPATH is that tree: the first --problems HumanEval prompts (the
human-eval protocol's prompt, stop rules and budget unless --max-new-tokens says otherwise), --n
samples each at T 0.8, the same seed, into an empty store. Row cap: --cap (the memory rule's cap
of an eval run), applied to the generator; a tree whose `generate_samples` still takes a
`batch_size` (one call per problem and chunk) gets `batch_size=n`, as `eval humaneval` chose it
there. Reported per tree: samples/s and generated tokens/s (every sampled token, EOS included) of
each round, and the median of the per-round new/old ratios (paired: robust to the machine's drift).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from records import Recorder, add_json_out, over

WORKER = r"""
import hashlib, inspect, json, sys, tempfile, time
from pathlib import Path
import torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
from opencodegen import default_model, load
from opencodegen.evaluation import humaneval as he
from opencodegen.evaluation.protocols import HUMAN_EVAL
from opencodegen.generation import Generator
from opencodegen.generation import engine
model, tokenizer = load(str(default_model.DIRECTORY), device="cpu")
generator = Generator(model, tokenizer, max_batch_size=spec["cap"])
problems = [he.Problem(p.task_id, HUMAN_EVAL.prompt(p.prompt), p.test, p.entry_point)
            for p in he.load_problems(limit=spec["problems"])]
tokens = 0
advance = engine.SequenceState.advance
def counting(self, *args):
    global tokens
    tokens += 1
    return advance(self, *args)
engine.SequenceState.advance = counting
kwargs = dict(n=spec["n"], temperatures=[0.8], top_p=HUMAN_EVAL.top_p, max_new_tokens=spec["max_new_tokens"],
              seed=1, progress=False, protocol=HUMAN_EVAL)
if "batch_size" in inspect.signature(he.generate_samples).parameters:
    kwargs["batch_size"] = spec["n"]
with tempfile.TemporaryDirectory() as tmp:
    store = he.ResultStore(Path(tmp) / "samples.jsonl", he.KEY)
    start = time.perf_counter()
    he.generate_samples(generator, problems, store, **kwargs)
    seconds = time.perf_counter() - start
    completions = sorted((r["task_id"], r["sample"], r["completion"]) for r in store.records)
print(json.dumps({"seconds": seconds, "samples": len(completions), "tokens": tokens,
                  "digest": hashlib.sha256(json.dumps(completions).encode()).hexdigest()[:16]}))
"""


def run(tree: str, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="src directory of the reference tree")
    parser.add_argument("--new", default=str(Path(__file__).resolve().parents[1] / "src"))
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--cap", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--old-label", default="the tree before continuous batching",
                        help="what --old is, for the records (e.g. a commit)")
    parser.add_argument("--json", help="write the measurements here")
    add_json_out(parser, "bench_eval_batching")
    args = parser.parse_args()
    spec = {"problems": args.problems, "n": args.n, "max_new_tokens": args.max_new_tokens, "cap": args.cap,
            "threads": args.threads}
    print(f"{args.problems} HumanEval prompts x {args.n} samples, T 0.8, budget {args.max_new_tokens}, "
          f"cap {args.cap}, {args.threads} threads; old {args.old}, new {args.new}", flush=True)
    rounds = []
    for r in range(args.rounds):
        order = [("old", args.old), ("new", args.new)]
        results = dict((name, run(tree, spec)) for name, tree in (order if r % 2 == 0 else order[::-1]))
        rounds.append(results)
        cells = "  ".join(f"{name}: {res['seconds']:7.1f} s {res['samples'] / res['seconds']:6.2f} samples/s "
                          f"{res['tokens'] / res['seconds']:7.1f} tok/s" for name, res in results.items())
        same = "same samples" if results["old"]["digest"] == results["new"]["digest"] else "samples differ"
        print(f"round {r + 1}: {cells}  ({same})", flush=True)
    samples = statistics.median(o["old"]["seconds"] / o["new"]["seconds"] for o in rounds)
    tokens = statistics.median((o["new"]["tokens"] / o["new"]["seconds"]) / (o["old"]["tokens"] / o["old"]["seconds"])
                               for o in rounds)
    print(f"median paired ratio new/old: samples/s {samples:.2f}x, tokens/s {tokens:.2f}x")
    recorder = Recorder("bench_eval_batching", args.json_out)
    setting = {"model": "demo", "problems": args.problems, "n": args.n, "temperature": 0.8,
               "max_new_tokens": args.max_new_tokens, "row cap": args.cap, "threads": args.threads}
    for metric, unit, key in (("samples/s", "samples/s", "samples"), ("tokens/s", "tokens/s", "tokens")):
        ours = statistics.median(o["new"][key] / o["new"]["seconds"] for o in rounds)
        old = statistics.median(o["old"][key] / o["old"]["seconds"] for o in rounds)
        recorder.add(metric, round(ours, 2), unit, setting, statistic=over("median", len(rounds), "paired round"),
                     reference=args.old_label, reference_value=round(old, 2),
                     ratio=round(samples if key == "samples" else tokens, 3))
    recorder.write()
    if args.json:
        Path(args.json).write_text(json.dumps({"spec": spec, "rounds": rounds, "samples_ratio": samples,
                                               "tokens_ratio": tokens}, indent=2) + "\n")


if __name__ == "__main__":
    main()
