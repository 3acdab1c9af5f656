"""Language-model loss of a model on held-out files, beside a unigram and a uniform baseline.

The files (paths, directories or corpus specs such as ``stdlib:heldout``) are read like `data build`
reads them, tokenized with the model's tokenizer, each followed by EOS, concatenated in input order
and cut into windows of ``n_ctx + 1`` tokens that overlap by one, the way training packs its data,
so every token after the first is predicted once from at most `n_ctx` tokens of context. Reported:
mean cross-entropy (nats per token), perplexity and bits per byte of UTF-8 text; the unigram
baseline predicts every token from token frequencies counted on training data (add-one smoothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from opencodegen.errors import DataError


def read_texts(inputs: Sequence[str]) -> list[str]:
    """The texts of `inputs`, as `opencodegen data build` reads them (specs expanded, bad files skipped)."""
    from opencodegen.data.installed import expand_inputs
    from opencodegen.data.sources import CorpusReader

    files, _ = expand_inputs(list(inputs))
    texts = [doc.text for doc in CorpusReader().read(files)]
    if not texts:
        raise DataError(f"no readable text in {', '.join(inputs)}")
    return texts


def token_stream(texts: Sequence[str], tokenizer) -> np.ndarray:
    """All texts' tokens, each text followed by EOS."""
    ids: list[int] = []
    for encoded in tokenizer.encode_batch(list(texts)):
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    return np.asarray(ids, dtype=np.int64)


def unigram_log_probs(counts: np.ndarray, vocab: int) -> np.ndarray:
    """log p(token) from training counts with add-one smoothing over `vocab` ids."""
    if counts.ndim != 1 or len(counts) > vocab or (counts < 0).any():
        raise DataError(f"token counts must be a non-negative vector of at most {vocab} entries")
    full = np.zeros(vocab, dtype=np.float64)
    full[: len(counts)] = counts
    return np.log(full + 1.0) - math.log(full.sum() + vocab)


@torch.no_grad()
def model_loss(model, stream: np.ndarray, batch_size: int = 8, progress: bool = True) -> tuple[float, int]:
    """(summed cross-entropy in nats, predicted tokens) of `model` over `stream` in n_ctx windows."""
    window = model.config.n_positions
    starts = list(range(0, len(stream) - 1, window))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in tqdm(range(0, len(starts), batch_size), desc="loss", unit="batch", disable=not progress):
        chunk = [torch.from_numpy(stream[s : s + window + 1]) for s in starts[i : i + batch_size]]
        width = max(len(c) for c in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.bool)
        for row, c in enumerate(chunk):  # right padding: causal attention never sees it
            ids[row, : len(c)] = c
            mask[row, : len(c)] = True
        ids, mask = ids.to(device), mask.to(device)
        logits = model(ids[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        keep = mask[:, 1:]
        total += float(nll[keep].double().sum())
        count += int(keep.sum())
    return total, count


def evaluate_loss(model, tokenizer, inputs: Sequence[str], counts: np.ndarray | None = None,
                  batch_size: int = 8, progress: bool = True) -> dict:
    """The summary `opencodegen eval loss` prints and saves."""
    texts = read_texts(inputs)
    stream = token_stream(texts, tokenizer)
    nats, predicted = model_loss(model, stream, batch_size, progress)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    vocab = model.config.vocab_size
    loss = nats / predicted
    summary = {
        "inputs": list(inputs), "documents": len(texts), "bytes": n_bytes, "tokens": int(len(stream)),
        "predicted_tokens": predicted, "context": model.config.n_positions,
        "loss": loss, "perplexity": math.exp(loss), "bits_per_byte": nats / math.log(2) / n_bytes,
        "uniform_loss": math.log(vocab),
    }
    if counts is not None:
        targets = stream[1:]  # the windows overlap by one token: every token but the first is predicted once
        unigram = -float(unigram_log_probs(counts, vocab)[targets].sum()) / len(targets)
        summary.update(unigram_loss=unigram, unigram_perplexity=math.exp(unigram),
                       unigram_bits_per_byte=unigram * len(targets) / math.log(2) / n_bytes)
    return summary


def load_counts(path: str | Path) -> np.ndarray:
    """Token counts saved by `data build` (train-token-counts.npy), from the file or its data directory."""
    from opencodegen.data.build import TRAIN_COUNTS

    path = Path(path)
    if path.is_dir():
        path = path / TRAIN_COUNTS
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a token-count file ({exc})") from None
