"""The running batch: the one decode core of the engine and the server.

Rows decode together, one token per step, in one KV cache; prefilled prompts join between
steps and rows leave when they finish. Each row's real tokens are a contiguous suffix of the
cache (left padding, masked out), so rows prefilled apart join by being right-aligned to the
longest, and columns that are padding in every row after rows leave are cut from the left.
A prompt continued by several rows is copied once per row, or, for a batch formed at once with
`share_prefix`, kept once for all of them (`SharedPrefixCache`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from opencodegen.generation.prefix_cache import SharedPrefixCache
from opencodegen.model import CodeGenForCausalLM, KVCache
from opencodegen.tokenizer import pad_left


@dataclasses.dataclass
class Prefilled:
    """Prompts run through the model: their cache, mask [B, cache.length] (True = real token) and
    logits [B, 1, V] for the token after each prompt ([B, T, V] with `all_logits`)."""

    cache: KVCache
    mask: torch.Tensor
    logits: torch.Tensor

    @property
    def next_logits(self) -> torch.Tensor:
        """[B, V]: the logits of the token after each prompt."""
        return self.logits[:, -1]


def prefill(
    model: CodeGenForCausalLM, prompts: Sequence[Sequence[int]], pad_id: int = 0, room: int = 0,
    all_logits: bool = False,
) -> Prefilled:
    """Run left-padded prompts through the model; the cache keeps `room` free columns after them."""
    ids, mask = pad_left(prompts, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device).bool()
    cache = model.new_cache(len(prompts), ids.shape[1] + room)
    out = model(ids, attention_mask=mask, past_key_values=cache, num_logits_to_keep=0 if all_logits else 1)
    return Prefilled(cache, mask, out.logits)


def worth_compacting(finished: int, rows: int, steps_left: int) -> bool:
    """Whether dropping finished rows pays: the steps they would still cost against moving the
    others (a row-step and moving one row's cache cost about the same: both read its cache once)."""
    return finished > 0 and finished * steps_left >= rows - finished


#: Prompts joining a batch: their cache, its mask [B, cache.length] and how many rows continue each (0: none).
Joining = tuple[KVCache, torch.Tensor, Sequence[int]]


class RunningBatch:
    """Cache, attention mask, next position and one caller-owned object per row.

    `share_prefix`: rows continuing one prompt attend to a single copy of it (`SharedPrefixCache`)
    from the first join of a prompt of `share_min_prompt` tokens or more continued by several rows
    on, until the batch empties; rows already running then keep their whole cache so far as a
    prompt of their own.
    """

    def __init__(self, model: CodeGenForCausalLM, *, share_prefix: bool = False, share_min_prompt: int = 0) -> None:
        self.model = model
        self.share_prefix, self.share_min_prompt = share_prefix, share_min_prompt
        self.cache: KVCache | None = None
        self.rows: list[Any] = []
        self._mask: torch.Tensor | None = None  # [B, cache capacity]: the cached columns, then all True
        self._positions: torch.Tensor | None = None  # [B]: each row's real tokens so far

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def mask(self) -> torch.Tensor | None:
        """[B, cache.length]: which cached columns are real tokens of each row."""
        return None if self._mask is None else self._mask[:, : self.cache.length]

    @property
    def shared(self) -> bool:
        """Whether the rows' prompts are kept once each (a `SharedPrefixCache`)."""
        return isinstance(self.cache, SharedPrefixCache)

    def _will_share(self, prompts: Sequence[tuple[int, int]]) -> bool:
        """Whether the batch keeps prompts once after prompts of these (length, rows) join."""
        return self.shared or (self.share_prefix and any(n > 1 and length >= self.share_min_prompt
                                                          for length, n in prompts))

    def tokens_after(self, prompts: Sequence[tuple[int, int]], room: int) -> int:
        """Token slots the cache holds after rows continuing prompts of these (length, rows) join with
        `room` more tokens each: what keeps the batch within a memory budget."""
        lengths = [length for length, _ in prompts]
        rows = len(self.rows) + sum(n for _, n in prompts)
        cache = self.cache if self.rows else None
        if self._will_share(prompts):
            if isinstance(cache, SharedPrefixCache):
                prompts_kept = cache.prompts + len(prompts)
                return prompts_kept * max(cache.offset, *lengths) + rows * (cache.length - cache.offset + room)
            alone = len(self.rows)  # rows running before the switch keep their cache as their prompt
            return (alone + len(prompts)) * max([*lengths] + ([cache.length] if cache else [])) + rows * room
        return rows * (max([*lengths] + ([cache.length] if cache else [])) + room)

    def add(self, joining: Sequence[Joining], rows: Sequence[Any], room: int) -> None:
        """Rows join, continuing the prompts of `joining` in order; afterwards every row has room
        for at least `room` more tokens."""
        if sum(n for _, _, repeats in joining for n in repeats) != len(rows):
            raise ValueError("one caller object per joining row is needed")
        if not rows:
            return
        parts = list(joining)
        old_mask, previous = self.mask, self.cache if self.shared and self.rows else None
        if self.rows and previous is None:  # running rows join the new cache like prompts
            parts.insert(0, (self.cache, old_mask, [1] * len(self.rows)))
        if self._will_share([(cache.length, n) for cache, _, repeats in parts for n in repeats]):
            groups = [(cache, row, n) for cache, _, repeats in parts for row, n in enumerate(repeats) if n]
            self.cache = SharedPrefixCache(self.model, groups, room, previous)
            aligned = self.cache.offset  # prompts end here, the rows' own tokens follow
        else:
            aligned = max(cache.length for cache, _, _ in parts)
            single = len(parts) == 1 and all(n == 1 for n in parts[0][2])
            if single and not self.rows and parts[0][0].max_len - aligned >= room:
                self.cache = parts[0][0]
            else:
                self.cache = self._merged(parts, aligned, room)
        self._mask = self._joined_mask(parts, old_mask if previous is not None else None, aligned)
        self._positions = self.mask.sum(1)
        self.rows += rows

    def _merged(self, parts: list[Joining], width: int, room: int) -> KVCache:
        """A new cache of `width` + `room` columns with each part's rows right-aligned in it."""
        merged = self.model.new_cache(sum(n for _, _, repeats in parts for n in repeats), width + room)
        row = 0
        for cache, _, repeats in parts:
            pad = width - cache.length
            same = all(n == 1 for n in repeats)  # one block copy instead of one per row
            for source_row, n in [(slice(None), len(repeats))] if same else enumerate(repeats):
                rows = slice(row, row + n)
                for target, source in ((merged.keys, cache.keys), (merged.values, cache.values)):
                    for layer, tensor in enumerate(target):
                        tensor[rows, :, :pad].zero_()  # never attended, but must not hold NaN garbage
                        tensor[rows, :, pad:width] = source[layer][source_row, :, : cache.length]
                row += n
        merged.length = width
        return merged

    def _joined_mask(self, parts: list[Joining], kept: torch.Tensor | None, aligned: int) -> torch.Tensor:
        """The mask after a join: `kept` rows (of a shared cache that stays) with their prompt columns
        padded on the left to `aligned`; each part's rows with their prompt ending at `aligned` and
        the own columns the kept rows have generated masked out."""
        capacity, own = self.cache.offset + self.cache.max_len, self.cache.length - aligned
        masks = []
        if kept is not None:
            masks.append(_placed(kept, aligned + own - kept.shape[1], capacity))
        for _, part_mask, repeats in parts:
            device = part_mask.device
            index = torch.arange(len(repeats), device=device).repeat_interleave(torch.tensor(repeats, device=device))
            mask = _placed(part_mask[index], aligned - part_mask.shape[1], capacity)
            mask[:, aligned : aligned + own] = False
            masks.append(mask)
        return torch.cat(masks)

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only these rows (ascending indices) and cut the stored columns that are padding in all of them."""
        if len(indices) == len(self.rows):
            return
        if not indices:
            self.cache, self._mask, self._positions, self.rows = None, None, None, []
            return
        index = torch.tensor(indices, device=self._mask.device)
        self._mask, self._positions = self._mask[index], self._positions[index]
        cache = self.cache
        start = cache.offset  # columns from here on are stored per row
        used = self._mask[:, start : cache.length].any(0)
        first = int(used.int().argmax()) if bool(used.any()) else cache.length - start  # first column still used
        if first:
            self._mask = torch.cat((self._mask[:, :start], self._mask[:, start + first :]), 1)
            cache.keys = [k[:, :, first:] for k in cache.keys]
            cache.values = [v[:, :, first:] for v in cache.values]
            cache.length -= first
        cache.compact(list(indices))
        self.rows = [self.rows[i] for i in indices]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B]; return the next-token logits [B, V]."""
        out = self.model(
            tokens.to(self._mask.device)[:, None],
            attention_mask=self._mask[:, : self.cache.length + 1],
            position_ids=self._positions[:, None],
            past_key_values=self.cache,
            num_logits_to_keep=1,
        )
        self._positions += 1
        return out.logits[:, -1]


def _placed(mask: torch.Tensor, start: int, capacity: int) -> torch.Tensor:
    """Rows of `mask` [B, W] as columns start … start + W of a [B, capacity] mask: False before, True after."""
    placed = torch.ones(mask.shape[0], capacity, dtype=torch.bool, device=mask.device)
    placed[:, :start] = False
    placed[:, start : start + mask.shape[1]] = mask
    return placed
