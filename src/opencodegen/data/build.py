"""`build_dataset`: corpus -> filtered, deduplicated, tokenized, shuffled, packed shards.

Steps: read documents (`sources`), drop exact duplicates (in the main process, before any
work), filter and tokenize in `workers` processes (each document gets EOS appended), drop
near duplicates (optional, main process, in input order), store the tokens in a temporary
file, shuffle the documents with `seed`, give the first ``val_fraction`` of them to the
validation split (or, with `val_inputs`, exactly the documents of those inputs that do not
duplicate a training document), and pack each split (`pack`). The output depends only on the inputs and
the arguments, not on the number of workers. The manifest is written last, atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
from tqdm import tqdm

from opencodegen.data.dedup import ExactDedup, NearDedup, minhash_signature
from opencodegen.data.filters import FilterConfig, reject_reason
from opencodegen.data.installed import expand_inputs, write_report
from opencodegen.data.pack import FORMAT, MANIFEST, SequencePacker, ShardWriter, token_dtype
from opencodegen.data.sources import CorpusReader, Document
from opencodegen.errors import DataError
from opencodegen.io import write_atomic

TMP_TOKENS = ".build-tokens.tmp"
LICENSES = "licenses.json"
TRAIN_COUNTS = "train-token-counts.npy"  # how often each token id occurs in the training split


class Tokenizer(Protocol):
    eos_token_id: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def __len__(self) -> int: ...


def load_tokenizer(path: str) -> Tokenizer:
    """`CodeGenTokenizer.from_pretrained(path)` (the default tokenizer factory)."""
    from opencodegen.tokenizer import CodeGenTokenizer

    return CodeGenTokenizer.from_pretrained(path)


@dataclass
class BuildConfig:
    """Arguments of a build (recorded in the manifest)."""

    inputs: list[str]
    out: str
    tokenizer: str
    val_inputs: list[str] = field(default_factory=list)
    languages: list[str] | None = None
    text_field: str = "content"
    lang_field: str | None = "lang"
    path_field: str | None = "path"
    seq_len: int = 2048
    workers: int = 1
    val_fraction: float = 0.01
    seed: int = 0
    near_dedup: bool = False
    near_dedup_threshold: float = 0.85
    num_perm: int = 128
    shard_tokens: int = 1 << 28
    max_bytes: int = 10_000_000
    filters: FilterConfig = field(default_factory=FilterConfig)
    overwrite: bool = False


class DocumentProcessor:
    """Filters and tokenizes batches of documents (runs in the worker processes)."""

    def __init__(self, tokenizer: Tokenizer, filters: FilterConfig, dtype: np.dtype, num_perm: int) -> None:
        self.tokenizer = tokenizer
        self.filters = filters
        self.dtype = dtype
        self.num_perm = num_perm

    def process(self, docs: list[Document]) -> list[tuple[str | None, np.ndarray | None, np.ndarray | None]]:
        """Per document: (reject reason, None, None) or (None, tokens + EOS, MinHash or None)."""
        reasons = [reject_reason(d.text, d.source, self.filters) for d in docs]
        kept = [d.text for d, r in zip(docs, reasons) if r is None]
        encoded = iter(self.tokenizer.encode_batch(kept) if kept else [])
        limit = np.iinfo(self.dtype).max
        out = []
        for doc, reason in zip(docs, reasons):
            if reason is not None:
                out.append((reason, None, None))
                continue
            ids = np.asarray([*next(encoded), self.tokenizer.eos_token_id], dtype=np.int64)
            if ids.min() < 0 or ids.max() > limit:
                raise DataError(f"token id out of range for {self.dtype} in {doc.source}")
            sig = minhash_signature(doc.text, self.num_perm) if self.num_perm else None
            out.append((None, ids.astype(self.dtype), sig))
        return out


_PROCESSOR: DocumentProcessor | None = None


def _init_worker(factory: Callable[[str], Tokenizer], path: str, filters: FilterConfig,
                 dtype: np.dtype, num_perm: int) -> None:
    global _PROCESSOR
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _PROCESSOR = DocumentProcessor(factory(path), filters, dtype, num_perm)


def _process_in_worker(docs: list[Document]) -> list:
    return _PROCESSOR.process(docs)


def _batches(docs: Iterable[Document], max_docs: int = 256, max_chars: int = 1 << 22) -> Iterator[list[Document]]:
    batch: list[Document] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _processed(batches: Iterator[list[Document]], config: BuildConfig, factory: Callable[[str], Tokenizer],
               tokenizer: Tokenizer, dtype: np.dtype, num_perm: int) -> Iterator[tuple[list[Document], list]]:
    """(batch, results) in input order; with several workers at most 2 batches per worker in flight."""
    if config.workers <= 1:
        processor = DocumentProcessor(tokenizer, config.filters, dtype, num_perm)
        for batch in batches:
            yield batch, processor.process(batch)
        return
    ctx = multiprocessing.get_context("spawn")
    init = (factory, config.tokenizer, config.filters, dtype, num_perm)
    with ctx.Pool(config.workers, initializer=_init_worker, initargs=init) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append((batch, pool.apply_async(_process_in_worker, (batch,))))
            if len(pending) >= 2 * config.workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


def _tokenizer_info(path: str, tokenizer: Tokenizer) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(path), "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id}
    file = Path(path) / "tokenizer.json"
    if file.is_file():
        info["tokenizer_json_sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
    return info


def _prepare_out(out: Path, overwrite: bool) -> None:
    if (out / MANIFEST).exists() and not overwrite:
        raise DataError(f"{out} already holds a packed dataset (pass --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    for old in [out / MANIFEST, out / LICENSES, out / TRAIN_COUNTS, *out.glob("*.bin"), *out.glob("*.bin.tmp")]:
        old.unlink(missing_ok=True)


def build_dataset(config: BuildConfig, tokenizer_factory: Callable[[str], Tokenizer] = load_tokenizer,
                  progress: bool = True) -> dict:
    """Build the packed dataset of `config` and return its manifest.

    `tokenizer_factory(config.tokenizer)` must be picklable (a module-level function) when
    ``config.workers > 1``: every worker calls it once. Corpus specs among the inputs
    (``stdlib:``, ``installed:permissive``) are expanded to files; their license report goes
    to ``licenses.json`` beside the manifest.
    """
    if config.seq_len < 1:
        raise DataError(f"seq_len must be positive, got {config.seq_len}")
    if not 0.0 <= config.val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {config.val_fraction}")
    out = Path(config.out)
    inputs, licenses = expand_inputs(config.inputs)
    val_inputs, val_licenses = expand_inputs(config.val_inputs)
    if val_licenses is not None:
        licenses = {**val_licenses, **(licenses or {})}
    tokenizer = tokenizer_factory(config.tokenizer)
    dtype = token_dtype(len(tokenizer))
    reader = CorpusReader(text_field=config.text_field, lang_field=config.lang_field,
                          path_field=config.path_field, languages=config.languages,
                          max_bytes=config.max_bytes)
    _prepare_out(out, config.overwrite)
    tmp = out / TMP_TOKENS
    try:
        with open(tmp, "wb") as store:
            lengths, is_val, per_language = _tokenize_corpus(reader, inputs, val_inputs, config, tokenizer_factory,
                                                             tokenizer, dtype, store, progress)
        if len(lengths) == 0:
            raise DataError(f"no documents left to pack (skipped: {dict(sorted(reader.skipped.items()))})")
        tokens = np.memmap(tmp, dtype=dtype, mode="r")
        order, n_val = _split_order(len(lengths), is_val if val_inputs else None, config)
        splits = _pack(tokens, lengths, order, n_val, config, out, dtype, progress)
        splits["train"]["token_counts"] = _write_train_counts(tokens, lengths, order[:n_val], len(tokenizer), out)
    finally:
        tmp.unlink(missing_ok=True)

    manifest = {
        "format": FORMAT,
        "seq_len": config.seq_len,
        "dtype": dtype.name,
        "seed": config.seed,
        "tokenizer": _tokenizer_info(config.tokenizer, tokenizer),
        "documents": {
            "kept": len(lengths),
            "skipped": dict(sorted(reader.skipped.items())),
            "seen": len(lengths) + sum(reader.skipped.values()),
        },
        "tokens": int(lengths.sum()),
        "languages": dict(sorted(per_language.items())),
        "splits": splits,
        "args": asdict(config),
    }
    if licenses is not None:
        write_report(licenses, out / LICENSES)
        manifest["licenses"] = LICENSES
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _tokenize_corpus(reader: CorpusReader, inputs: list[str], val_inputs: list[str], config: BuildConfig,
                     factory: Callable[[str], Tokenizer], tokenizer: Tokenizer, dtype: np.dtype, store: BinaryIO,
                     progress: bool) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, int]]]:
    """Write the tokens of every kept document to `store`; returns their lengths, whether each came
    from `val_inputs` (read after `inputs`, so a duplicate of a training document is dropped), and
    per-language counts."""
    exact = ExactDedup()
    near = NearDedup(config.near_dedup_threshold, config.num_perm) if config.near_dedup else None
    lengths = array("q")
    from_val = array("b")
    per_language: dict[str, dict[str, int]] = {}
    with tqdm(desc="documents", unit="doc", disable=not progress) as bar:

        def unique(docs: Iterable[Document]) -> Iterator[Document]:
            for doc in docs:
                bar.update()
                if exact.is_duplicate(doc.text):
                    reader.skipped.skip("duplicate")
                else:
                    yield doc

        # Results come back in input order: the documents after the first `train_docs` are validation ones.
        train_docs = [math.inf]

        def training_then_validation() -> Iterator[Document]:
            count = 0
            for doc in unique(reader.read(inputs)):
                count += 1
                yield doc
            train_docs[0] = count
            yield from unique(reader.read(val_inputs))

        position = 0
        batches = _batches(training_then_validation())
        num_perm = config.num_perm if near is not None else 0
        for batch, results in _processed(batches, config, factory, tokenizer, dtype, num_perm):
            for doc, (reason, ids, sig) in zip(batch, results):
                position += 1
                if reason is not None:
                    reader.skipped.skip(reason)
                elif near is not None and near.is_duplicate(sig):
                    reader.skipped.skip("near_duplicate")
                else:
                    store.write(ids.tobytes())
                    lengths.append(len(ids))
                    from_val.append(position > train_docs[0])
                    entry = per_language.setdefault(doc.language or "unknown", {"documents": 0, "tokens": 0})
                    entry["documents"] += 1
                    entry["tokens"] += len(ids)
            bar.set_postfix(kept=len(lengths), refresh=False)
    return np.frombuffer(lengths, dtype=np.int64), np.frombuffer(from_val, dtype=np.int8).astype(bool), per_language


def _split_order(n: int, is_val: np.ndarray | None, config: BuildConfig) -> tuple[np.ndarray, int]:
    """The documents in packing order and how many of the first are validation ones: the `is_val`
    documents in input order, else a random ``val_fraction``; the training documents shuffled."""
    order = np.random.default_rng(config.seed).permutation(n)
    if is_val is not None:
        return np.concatenate([np.flatnonzero(is_val), order[~is_val[order]]]), int(is_val.sum())
    n_val = round(config.val_fraction * n)
    if config.val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return order, n_val


def _pack(tokens: np.ndarray, lengths: np.ndarray, order: np.ndarray, n_val: int, config: BuildConfig, out: Path,
          dtype: np.dtype, progress: bool) -> dict[str, dict]:
    """Pack the validation documents `order[:n_val]` and the training documents after them."""
    starts = np.concatenate([[0], np.cumsum(lengths)])
    rows_per_shard = config.shard_tokens // config.seq_len
    splits = {}
    with tqdm(total=int(starts[-1]), desc="packing", unit="tok", unit_scale=True, disable=not progress) as bar:
        for split, docs in (("train", order[n_val:]), ("val", order[:n_val])):
            writer = ShardWriter(out, split, config.seq_len + 1, dtype, rows_per_shard)
            packer = SequencePacker(config.seq_len, writer)
            for i in docs:
                packer.add(tokens[starts[i] : starts[i + 1]])
                bar.update(int(lengths[i]))
            splits[split] = {"documents": len(docs), **packer.finish()}
    if splits["train"]["sequences"] == 0:
        raise DataError(f"the training split has {splits['train']['tokens']} tokens, fewer than one "
                        f"sequence of {config.seq_len + 1}; lower --seq-len or add data")
    return splits


def _write_train_counts(tokens: np.ndarray, lengths: np.ndarray, val_docs: np.ndarray, vocab: int, out: Path) -> str:
    """Save how often each token id occurs in the training documents (all but `val_docs`), e.g.
    for a unigram baseline; returns the file name."""
    starts = np.concatenate([[0], np.cumsum(lengths)])
    counts = np.bincount(tokens, minlength=vocab).astype(np.int64)
    for i in val_docs:
        counts -= np.bincount(tokens[starts[i] : starts[i + 1]], minlength=vocab)
    np.save(out / TRAIN_COUNTS, counts)
    return TRAIN_COUNTS

