"""`opencodegen data build|info`: pack a code corpus into training shards, or describe them."""

from __future__ import annotations

import argparse
import json
import os

from opencodegen.cli_options import add_json_argument, add_seed_argument, positive_int, probability


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="build or inspect packed training data")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="filter, dedup, tokenize and pack a code corpus")
    b.add_argument("--input", nargs="+", action="extend", required=True, metavar="PATH",
                   help="source directories, source files, .jsonl[.gz] or .parquet record files, or the "
                   "license-filtered offline corpus specs 'stdlib:' and 'installed:permissive' "
                   "(report in licenses.json)")
    b.add_argument("--tokenizer", required=True, help="tokenizer directory (CodeGenTokenizer.from_pretrained)")
    b.add_argument("--out", required=True, help="output directory for shards and manifest.json")
    b.add_argument("--languages", help="comma-separated languages to keep (python,c,cpp,go,java,javascript,...)")
    b.add_argument("--text-field", default="content", help="record field holding the text (default: content)")
    b.add_argument("--lang-field", default="lang", help="record field holding the language (default: lang)")
    b.add_argument("--path-field", default="path",
                   help="record field holding a file path, for the language by extension (default: path)")
    b.add_argument("--seq-len", type=positive_int, default=2048, help="tokens per training sequence (default: 2048)")
    b.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="tokenizer processes")
    b.add_argument("--val-fraction", type=probability, default=0.01,
                   help="fraction of documents held out for validation (default: 0.01; ignored with --val-input)")
    b.add_argument("--val-input", nargs="+", action="extend", default=[], metavar="PATH",
                   help="inputs (like --input, e.g. 'stdlib:heldout') that form the validation split instead; "
                   "documents that duplicate training documents are dropped from it")
    add_seed_argument(b, default=0)
    b.add_argument("--near-dedup", action="store_true", help="also drop near duplicates (MinHash LSH)")
    b.add_argument("--near-dedup-threshold", type=probability, default=0.85,
                   help="estimated Jaccard similarity of word 5-grams above which files are near duplicates")
    b.add_argument("--shard-tokens", type=positive_int, default=1 << 28, help="tokens per shard file (default: 2^28)")
    b.add_argument("--max-bytes", type=positive_int, default=10_000_000, help="skip files larger than this")
    b.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=run_build)

    i = sub.add_parser("info", help="summarize a packed data directory")
    i.add_argument("dir", help="packed data directory")
    i.add_argument("--verify", action="store_true", help="check every shard's sha256")
    add_json_argument(i, "the manifest")
    i.set_defaults(func=run_info)


def run_build(args: argparse.Namespace) -> int:
    from opencodegen.data.build import BuildConfig, build_dataset

    languages = [x for x in args.languages.split(",") if x.strip()] if args.languages else None
    config = BuildConfig(
        inputs=args.input, val_inputs=args.val_input, out=args.out, tokenizer=args.tokenizer, languages=languages,
        text_field=args.text_field, lang_field=args.lang_field or None, path_field=args.path_field or None,
        seq_len=args.seq_len, workers=args.workers, val_fraction=args.val_fraction, seed=args.seed,
        near_dedup=args.near_dedup, near_dedup_threshold=args.near_dedup_threshold,
        shard_tokens=args.shard_tokens, max_bytes=args.max_bytes, overwrite=args.overwrite,
    )
    manifest = build_dataset(config, progress=not args.quiet)
    print(summary(manifest))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from opencodegen.data.dataset import PackedDataset, read_manifest

    manifest = read_manifest(args.dir)
    for split in manifest["splits"]:
        PackedDataset(args.dir, split, verify=args.verify)  # raises DataError on a bad shard
    print(json.dumps(manifest, indent=2) if args.json else summary(manifest))
    if args.verify:
        print("all shard checksums match")
    return 0


def summary(manifest: dict) -> str:
    """A few human-readable lines about a packed dataset."""
    docs = manifest["documents"]
    lines = [
        f"documents: {docs['kept']:,} kept of {docs['seen']:,} seen; tokens: {manifest['tokens']:,}; "
        f"seq_len {manifest['seq_len']}, {manifest['dtype']}",
        "skipped: " + (", ".join(f"{k} {v:,}" for k, v in docs["skipped"].items()) or "none"),
        "languages: " + ", ".join(f"{k} {v['documents']:,} docs / {v['tokens']:,} tok"
                                  for k, v in manifest["languages"].items()),
    ]
    for name, split in manifest["splits"].items():
        lines.append(f"{name}: {split['documents']:,} docs, {split['tokens']:,} tokens, "
                     f"{split['sequences']:,} sequences in {len(split['shards'])} shards "
                     f"({split['dropped_tokens']:,} tail tokens dropped)")
    return "\n".join(lines)
