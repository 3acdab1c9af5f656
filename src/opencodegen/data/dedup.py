"""Exact dedup (sha256 of the UTF-8 content) and near dedup (MinHash LSH, datasketch).

Both keep the first document seen and drop later ones, so the result depends only on the
input order. Near dedup treats every LSH candidate (a shared band of the MinHash signatures
of word 5-gram shingles) as a duplicate, without a second exact-Jaccard check.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from opencodegen.extras import require

WORD = re.compile(r"\w+")
MINHASH_SEED = 1


def content_digest(text: str) -> bytes:
    """sha256 of the UTF-8 bytes of `text`."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class ExactDedup:
    """Remembers content digests; `is_duplicate(text)` is True for every repeat of a text."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def is_duplicate(self, text: str) -> bool:
        digest = content_digest(text)
        if digest in self._seen:
            return True
        self._seen.add(digest)
        return False


def shingles(text: str, ngram: int = 5) -> set[bytes]:
    """Word n-grams of `text` (all its words as one shingle when it has fewer than n)."""
    words = WORD.findall(text)
    if len(words) <= ngram:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)}


def minhash_signature(text: str, num_perm: int = 128) -> np.ndarray:
    """The MinHash hash values of the shingles of `text` (computed in the tokenizer workers)."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=MINHASH_SEED)
    m.update_batch(list(shingles(text)))
    return m.hashvalues


class NearDedup:
    """MinHash LSH index; `is_duplicate(sig)` is True when a kept document is a candidate."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 128) -> None:
        require("datasketch", "data", "near dedup (--near-dedup)")
        from datasketch import MinHash, MinHashLSH

        self.num_perm = num_perm
        self._scheme = MinHash(num_perm=num_perm, seed=MINHASH_SEED).scheme
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._count = 0

    def is_duplicate(self, signature: np.ndarray) -> bool:
        from datasketch import LeanMinHash

        m = LeanMinHash(seed=MINHASH_SEED, hashvalues=signature, scheme=self._scheme)
        if self._lsh.query(m):
            return True
        self._lsh.insert(self._count, m, check_duplication=False)
        self._count += 1
        return False
