"""Reading packed shards: `PackedDataset` (random access) and `BatchIterator` (resumable cursor).

A sequence is ``seq_len + 1`` tokens (see `opencodegen.data.pack`): the trainer feeds
``batch[:, :-1]`` as input ids and uses ``batch[:, 1:]`` as next-token labels, so every input
position has a target.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from opencodegen.data.pack import FORMAT, MANIFEST
from opencodegen.errors import DataError

if TYPE_CHECKING:
    import torch


def read_manifest(path: str | Path) -> dict:
    """The manifest of a packed data directory, or DataError when it is missing or malformed."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise DataError(f"{path}: no {MANIFEST} (not a packed data directory, or an unfinished build)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{file}: not a {FORMAT} manifest")
    return manifest


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class PackedDataset:
    """The sequences of one split of a packed directory, memory-mapped.

    ``ds[i]`` is sequence ``i`` as a uint16/uint32 numpy array of ``seq_len + 1`` tokens.
    Opening checks every shard's size against the manifest; ``verify=True`` also checks the
    sha256 checksums (reads every byte). Both raise DataError naming the bad shard.
    """

    def __init__(self, path: str | Path, split: str = "train", verify: bool = False) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        splits = self.manifest["splits"]
        if split not in splits:
            raise DataError(f"{self.path}: no split {split!r} (have: {', '.join(splits)})")
        self.split = split
        self.seq_len = int(self.manifest["seq_len"])
        self.dtype = np.dtype(self.manifest["dtype"])
        self.eos_token_id = int(self.manifest["tokenizer"]["eos_token_id"])
        info = splits[split]
        self._shards: list[np.memmap] = []
        for shard in info["shards"]:
            self._shards.append(self._open_shard(shard, verify))
        counts = [len(s) for s in self._shards]
        self._starts = np.cumsum([0, *counts])
        if self._starts[-1] != info["sequences"]:
            raise DataError(f"{self.path}: split {split} has {self._starts[-1]} sequences in its shards, "
                            f"manifest says {info['sequences']}")

    def _open_shard(self, shard: dict, verify: bool) -> np.memmap:
        file = self.path / shard["file"]
        row = self.seq_len + 1
        expected = shard["sequences"] * row * self.dtype.itemsize
        if not file.is_file():
            raise DataError(f"{file}: shard missing")
        size = file.stat().st_size
        if size != expected or shard["bytes"] != expected:
            raise DataError(f"{file}: corrupt shard: {size} bytes, expected {expected}")
        if verify and file_sha256(file) != shard["sha256"]:
            raise DataError(f"{file}: corrupt shard: sha256 does not match the manifest")
        return np.memmap(file, dtype=self.dtype, mode="r", shape=(shard["sequences"], row))

    @property
    def fingerprint(self) -> str:
        """Short hash of this split's shard checksums: identifies the data a cursor belongs to."""
        sums = "".join(s["sha256"] for s in self.manifest["splits"][self.split]["shards"])
        return hashlib.sha256(sums.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sequence {index} out of range for {len(self)} sequences")
        index %= len(self)
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._shards[shard][index - self._starts[shard]]

    def batch(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """LongTensor [len(indices), seq_len + 1] of the given (at least one) sequences."""
        import torch

        return torch.from_numpy(np.stack([self[int(i)] for i in indices]).astype(np.int64))


class InMemorySequences:
    """Token rows held in memory, with the reader interface of PackedDataset (for tests,
    benchmarks and small fine-tuning sets). `rows` is [N, seq_len + 1]."""

    path, split = "memory", "train"

    def __init__(self, rows: torch.Tensor, fingerprint: str = "in-memory") -> None:
        self.rows = rows
        self.seq_len = rows.shape[1] - 1
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        return self.rows[np.asarray(indices, dtype=np.int64)]


class BatchIterator:
    """Deterministic, resumable batches of a `PackedDataset` for data-parallel training.

    Epoch ``e`` visits the sequences in ``default_rng([seed, e]).permutation(n)`` (or in order
    with ``shuffle=False``), in global batches of `global_batch_size` consecutive entries; a
    tail shorter than a global batch is skipped. Rank ``r`` of ``world_size`` gets rows
    ``[r*b, (r+1)*b)`` of each global batch (``b = global_batch_size // world_size``), so the
    ranks' batches are disjoint and together are the global batch. The cursor (epoch,
    position = sequences of the epoch consumed) is global, so a checkpoint taken on any rank
    resumes on any world size. With ``loop=False`` iteration ends after one epoch.
    """

    def __init__(
        self,
        dataset: PackedDataset,
        global_batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        loop: bool = True,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in a world of size {world_size}")
        if global_batch_size < 1 or global_batch_size % world_size:
            raise DataError(f"global batch size {global_batch_size} is not a positive multiple "
                            f"of the world size {world_size}")
        if len(dataset) < global_batch_size:
            raise DataError(f"{dataset.path} ({dataset.split}) has {len(dataset)} sequences, fewer than "
                            f"one global batch of {global_batch_size}")
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.loop = loop
        self.epoch = 0
        self.position = 0
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            n = len(self.dataset)
            self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(n)
                           if self.shuffle else np.arange(n))
            self._order_epoch = self.epoch
        return self._order

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        """This rank's LongTensor [global_batch_size // world_size, seq_len + 1]."""
        if self.position + self.global_batch_size > len(self.dataset):
            if not self.loop:
                raise StopIteration
            self.epoch += 1
            self.position = 0
        start = self.position + self.rank * self.local_batch_size
        local = self._epoch_order()[start : start + self.local_batch_size]
        self.position += self.global_batch_size
        return self.dataset.batch(local)

    def state_dict(self) -> dict:
        """The cursor, plus what identifies the data and order it belongs to."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_sequences": len(self.dataset),
            "fingerprint": self.dataset.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a cursor; DataError when it belongs to other data, seed or order."""
        mine = self.state_dict()
        for key in ("seed", "shuffle", "num_sequences", "fingerprint"):
            if state.get(key) != mine[key]:
                raise DataError(f"data cursor does not match this dataset: {key} is {state.get(key)!r} "
                                f"in the checkpoint, {mine[key]!r} here")
        position = int(state["position"])
        if not 0 <= position <= len(self.dataset):
            raise DataError(f"data cursor position {position} outside 0..{len(self.dataset)}")
        self.epoch = int(state["epoch"])
        self.position = position
