"""Packing of a token stream into fixed-length sequences stored in flat binary shards.

On-disk format (``FORMAT``): a directory with ``manifest.json`` and, per split, shards
``{split}-{i:05d}.bin``. A shard is a C-order array of shape [rows, seq_len + 1] in the
manifest's ``dtype`` (uint16 when the vocabulary has at most 65,536 ids, else uint32),
native little-endian, no header. Row ``k`` of the split (counting across its shards) holds
tokens ``stream[k*seq_len : k*seq_len + seq_len + 1]`` of the split's token stream (its
documents, each followed by EOS, in shuffled order): consecutive rows overlap by one token,
so every position of a row's first ``seq_len`` tokens has its next-token target inside the
row, and every stream token after the first is a target exactly once. Stream tokens after
the last full row are dropped (counted as ``dropped_tokens``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

FORMAT = "opencodegen-packed-v1"
MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id of a `vocab_size` vocabulary fits in 16 bits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Writes rows into shards of at most `rows_per_shard` rows; a shard appears only when complete."""

    def __init__(self, out_dir: Path, split: str, row_len: int, dtype: np.dtype, rows_per_shard: int) -> None:
        self.out_dir = out_dir
        self.split = split
        self.row_len = row_len
        self.dtype = dtype
        self.rows_per_shard = max(1, rows_per_shard)
        self.shards: list[dict] = []
        self._file = None
        self._hash = None
        self._rows = 0

    def write(self, rows: np.ndarray) -> None:
        """Append rows of shape [k, row_len]."""
        while len(rows):
            if self._file is None:
                self._open()
            take = min(len(rows), self.rows_per_shard - self._rows)
            data = np.ascontiguousarray(rows[:take], dtype=self.dtype).tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._rows += take
            rows = rows[take:]
            if self._rows == self.rows_per_shard:
                self._close_shard()

    def close(self) -> list[dict]:
        """Finish the last shard; returns one record per shard (file, rows, bytes, sha256)."""
        if self._file is not None:
            self._close_shard()
        return self.shards

    def _name(self) -> str:
        return f"{self.split}-{len(self.shards):05d}.bin"

    def _open(self) -> None:
        self._file = open(self.out_dir / (self._name() + ".tmp"), "wb")
        self._hash = hashlib.sha256()
        self._rows = 0

    def _close_shard(self) -> None:
        name = self._name()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.out_dir / (name + ".tmp"), self.out_dir / name)
        self.shards.append({
            "file": name,
            "sequences": self._rows,
            "bytes": self._rows * self.row_len * self.dtype.itemsize,
            "sha256": self._hash.hexdigest(),
        })
        self._file = None


class SequencePacker:
    """Cuts the concatenation of the token arrays given to `add` into rows (module docstring)."""

    def __init__(self, seq_len: int, writer: ShardWriter, flush_tokens: int = 1 << 20) -> None:
        self.seq_len = seq_len
        self.writer = writer
        self.flush_tokens = max(flush_tokens, seq_len + 1)
        self.tokens = 0
        self.sequences = 0
        self._pending: list[np.ndarray] = []
        self._pending_len = 0

    def add(self, tokens: np.ndarray) -> None:
        self._pending.append(tokens)
        self._pending_len += len(tokens)
        self.tokens += len(tokens)
        if self._pending_len >= self.flush_tokens:
            self._flush()

    def finish(self) -> dict:
        """Write what is left; returns the split's counts and shard records."""
        self._flush()
        covered = self.sequences * self.seq_len + 1 if self.sequences else 0
        return {
            "sequences": self.sequences,
            "tokens": self.tokens,
            "dropped_tokens": self.tokens - covered,
            "shards": self.writer.close(),
        }

    def _flush(self) -> None:
        if not self._pending:
            return
        buf = np.concatenate(self._pending)
        rows = (len(buf) - 1) // self.seq_len
        if rows > 0:
            windows = np.lib.stride_tricks.sliding_window_view(buf, self.seq_len + 1)
            self.writer.write(windows[:: self.seq_len][:rows])
            self.sequences += rows
            buf = buf[rows * self.seq_len :]
        self._pending = [buf]
        self._pending_len = len(buf)
