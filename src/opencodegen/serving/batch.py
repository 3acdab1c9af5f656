"""The running batch of continuous batching: one KV cache whose rows come and go.

Each row's real tokens are a contiguous suffix of the cache (left padding, masked out through
the attention mask), so rows prefilled separately can be merged by right-aligning them, and
columns that are padding in every row (after rows leave) can be cut from the left. The width
of the cache is therefore always the longest row's real length, never more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from opencodegen.model import CodeGenForCausalLM, KVCache
from opencodegen.tokenizer import pad_left


def prefill(
    model: CodeGenForCausalLM, prompts: Sequence[Sequence[int]], pad_id: int, room: int, all_logits: bool = False
) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
    """Run left-padded prompts through the model: (cache with `room` free columns, mask, logits).

    Logits are [B, 1, V] (the last position) or, with `all_logits`, [B, T, V].
    """
    ids, mask = pad_left(prompts, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    cache = model.new_cache(len(prompts), ids.shape[1] + room)
    out = model(ids, attention_mask=mask, past_key_values=cache, num_logits_to_keep=0 if all_logits else 1)
    return cache, mask, out.logits


def merge_caches(
    model: CodeGenForCausalLM, parts: Sequence[tuple[KVCache, torch.Tensor]], room: int
) -> tuple[KVCache, torch.Tensor]:
    """Stack caches (with their masks) row-wise, right-aligned to the longest; `room` free columns after."""
    width = max(cache.length for cache, _ in parts)
    merged = model.new_cache(sum(cache.batch_size for cache, _ in parts), width + room)
    masks, row = [], 0
    for cache, mask in parts:
        rows, pad = slice(row, row + cache.batch_size), width - cache.length
        for target, source in ((merged.keys, cache.keys), (merged.values, cache.values)):
            for layer, tensor in enumerate(target):
                tensor[rows, :, :pad].zero_()  # never attended, but must not hold NaN garbage
                tensor[rows, :, pad:width] = source[layer][:, :, : cache.length]
        masks.append(F.pad(mask, (pad, 0)))
        row += cache.batch_size
    merged.length = width
    return merged, torch.cat(masks)


class RunningBatch:
    """Cache, attention mask [B, cache.length] and one caller-owned object per row."""

    def __init__(self, model: CodeGenForCausalLM):
        self.model = model
        self.cache: KVCache | None = None
        self.mask: torch.Tensor | None = None
        self.rows: list[Any] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, cache: KVCache, mask: torch.Tensor, rows: Sequence[Any], room: int) -> None:
        """Join prefilled rows; afterwards at least `room` more tokens fit in the cache."""
        if not self.rows and cache.max_len - cache.length >= room:
            self.cache, self.mask, self.rows = cache, mask, list(rows)
            return
        parts = [(self.cache, self.mask)] if self.rows else []
        self.cache, self.mask = merge_caches(self.model, [*parts, (cache, mask)], room)
        self.rows += rows

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only these rows (ascending indices) and cut the columns that are padding in all of them."""
        if len(indices) == len(self.rows):
            return
        if not indices:
            self.cache, self.mask, self.rows = None, None, []
            return
        self.mask = self.mask[torch.tensor(indices, device=self.mask.device)]
        first = int(self.mask.any(0).int().argmax())  # first column some row still uses
        if first:
            self.mask = self.mask[:, first:]
            self.cache.keys = [k[:, :, first:] for k in self.cache.keys]
            self.cache.values = [v[:, :, first:] for v in self.cache.values]
            self.cache.length -= first
        self.cache.compact(list(indices))
        self.rows = [self.rows[i] for i in indices]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B]; return the next-token logits [B, V]."""
        ones = torch.ones(len(self.rows), 1, dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        out = self.model(
            tokens.to(self.mask.device)[:, None], attention_mask=self.mask, past_key_values=self.cache,
            num_logits_to_keep=1,
        )  # fmt: skip
        return out.logits[:, -1]
