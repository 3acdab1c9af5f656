"""Load time and peak memory of a checkpoint: opencodegen vs transformers' from_pretrained.

    python benchmarks/bench_load.py [--preset codegen-350M-mono] [--dtype float32|float16]

Writes a random checkpoint of the preset's shape once (cached under --workdir), then loads it
in fresh subprocesses, each reporting: RSS after imports, peak RSS during the load (above that
baseline), weight bytes and seconds. The issue's bound: peak extra RSS <= 1.3 x weight bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from records import Recorder, add_json_out

CHILD = r"""
import json, resource, sys, time
import torch
which, path, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
torch.set_num_threads(2)
if which == "transformers":
    import transformers
else:
    import opencodegen.checkpoint
def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
base = rss_kb()
t0 = time.perf_counter()
if which == "transformers":
    model = transformers.CodeGenForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
else:
    model = opencodegen.checkpoint.load_model(path, dtype=dtype)[1]
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"seconds": seconds, "base_kb": base, "peak_kb": peak, "weight_bytes": nbytes}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="codegen-350M-mono")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "opencodegen-bench-load"))
    add_json_out(parser, "bench_load")
    args = parser.parse_args()

    import torch

    from opencodegen.config import CodeGenConfig
    from opencodegen.model import CodeGenForCausalLM

    ckpt = Path(args.workdir) / f"{args.preset}-{args.dtype}"
    if not (ckpt / "config.json").exists():
        print(f"writing a random {args.preset} checkpoint to {ckpt} ...", flush=True)
        model = CodeGenForCausalLM(CodeGenConfig.from_preset(args.preset))
        model.save_pretrained(ckpt, dtype=getattr(torch, args.dtype))
        del model

    results = {}
    for which in ("transformers", "opencodegen"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, which, str(ckpt), args.dtype], capture_output=True, text=True, check=True
        )
        results[which] = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"\n{args.preset} ({args.dtype}), weights {results['opencodegen']['weight_bytes'] / 2**20:.0f} MiB")
    print(f"{'loader':<14}{'seconds':>9}{'peak extra RSS':>16}{'x weights':>11}")
    for which, r in results.items():
        extra = (r["peak_kb"] - r["base_kb"]) * 1024
        print(f"{which:<14}{r['seconds']:>9.2f}{extra / 2**20:>13.0f} MiB{extra / r['weight_bytes']:>11.2f}")
    ours, ref = results["opencodegen"], results["transformers"]
    print(f"\nload time ratio (transformers / ours): {ref['seconds'] / ours['seconds']:.2f}x")
    ours_extra = ours["peak_kb"] - ours["base_kb"]
    ref_extra = ref["peak_kb"] - ref["base_kb"]
    print(f"peak extra RSS ratio (transformers / ours): {ref_extra / ours_extra:.2f}x")
    recorder = Recorder("bench_load", args.json_out)
    setting = {"preset": args.preset, "dtype": args.dtype}
    recorder.add("load time", round(ours["seconds"], 3), "s", setting, statistic="one run", reference="transformers",
                 reference_value=round(ref["seconds"], 3), ratio=round(ref["seconds"] / ours["seconds"], 3))
    recorder.add("peak extra RSS", round(ours_extra / 1024, 1), "MiB", setting, statistic="one run",
                 reference="transformers", reference_value=round(ref_extra / 1024, 1),
                 ratio=round(ref_extra / ours_extra, 3))
    recorder.add("peak extra RSS per weight byte", round(ours_extra * 1024 / ours["weight_bytes"], 3), "", setting,
                 statistic="one run", reference="transformers",
                 reference_value=round(ref_extra * 1024 / ref["weight_bytes"], 3))
    recorder.write()


if __name__ == "__main__":
    main()
