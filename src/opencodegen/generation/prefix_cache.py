"""A decode cache for n samples per prompt that keeps each prompt's keys and values once.

Rows continuing prompt g form a contiguous run of the batch. The prompts' keys/values, left-padded
to the longest (P tokens), are stored once per layer as [G, H, P, D]; each row stores only the
tokens generated after it joined (`offset` = P). A decode step attends to a prompt with one matmul
for all of its rows' queries, so the prompt is read once per step instead of once per row — the
step's memory traffic for the cache drops from rows × (P + t) to G × P + rows × t tokens, and so
does the cache's size. Rows may join later (new prompts are appended, the rows' own tokens are copied over) and
leave (`compact`); prompts no row continues any more are dropped when rows next join.
"""

from __future__ import annotations

import torch

from opencodegen.model import CodeGenForCausalLM, KVCache

#: A prompt joining: (a cache holding it, its row there, the number of rows continuing it).
Group = tuple[KVCache, int, int]


class SharedPrefixCache(KVCache):
    """The rows of `previous` (if any) with their prompts, then `groups`' rows, in row order;
    every row has room for `room` more tokens."""

    def __init__(
        self, model: CodeGenForCausalLM, groups: list[Group], room: int, previous: SharedPrefixCache | None = None
    ) -> None:
        config = model.config
        old_rows = previous.batch_size if previous is not None else 0
        own = previous.length - previous.offset if previous is not None else 0
        super().__init__(config, old_rows + sum(n for _, _, n in groups), own + room, model.dtype, model.device)
        live = sorted(set(previous._row_groups)) if previous is not None else []
        longest = max([prefix.length for prefix, _, _ in groups] + ([previous.offset] if previous is not None else []))
        shape = (len(live) + len(groups), config.n_head, longest, config.head_dim)
        self.prefix_keys = [torch.zeros(shape, dtype=model.dtype, device=model.device) for _ in range(config.n_layer)]
        self.prefix_values = [torch.zeros_like(t) for t in self.prefix_keys]
        self._row_groups: list[int] = []
        if previous is not None:
            self._take_over(previous, live, own)
        for g, (prefix, row, n) in enumerate(groups, len(live)):
            for ours, theirs in ((self.prefix_keys, prefix.keys), (self.prefix_values, prefix.values)):
                for layer, source in enumerate(theirs):
                    ours[layer][g, :, longest - prefix.length :] = source[row, :, : prefix.length]
            self._row_groups += [g] * n
        self.offset, self.length = longest, longest + own
        self._plan()

    def _take_over(self, previous: SharedPrefixCache, live: list[int], own: int) -> None:
        """Copy the prompts still continued and every row's own tokens of `previous`; the joining rows'
        own columns so far are zeros (masked out, but never NaN garbage)."""
        index = torch.tensor(live, device=self.keys[0].device)
        longest, rows = self.prefix_keys[0].shape[2], previous.batch_size
        for ours, theirs in ((self.prefix_keys, previous.prefix_keys), (self.prefix_values, previous.prefix_values)):
            for layer, source in enumerate(theirs):
                ours[layer][: len(live), :, longest - previous.offset :] = source[index]
        for ours, theirs in ((self.keys, previous.keys), (self.values, previous.values)):
            for layer, source in enumerate(theirs):
                ours[layer][:rows, :, :own] = source[:, :, :own]
                ours[layer][rows:, :, :own].zero_()
        renumber = {g: i for i, g in enumerate(live)}
        self._row_groups = [renumber[g] for g in previous._row_groups]

    def _plan(self) -> None:
        """Where each row's query goes in the [prompts, rows per prompt] layout of the prompt matmuls:
        (prompt, place among the rows continuing it) per row, and how many places a prompt has."""
        places, previous, place = [], None, 0
        for g in self._row_groups:  # a prompt's rows are contiguous
            place = place + 1 if g == previous else 0
            places.append(place)
            previous = g
        device = self.keys[0].device
        self._places = (torch.tensor(self._row_groups, device=device), torch.tensor(places, device=device))
        self._width_rows = max(places, default=0) + 1

    @property
    def prompts(self) -> int:
        """How many prompts the rows continue (prompts no row continues any more are not counted)."""
        return len(set(self._row_groups))

    def compact(self, rows: list[int]) -> SharedPrefixCache:
        super().compact(rows)
        self._row_groups = [self._row_groups[r] for r in rows]
        self._plan()
        return self

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """One decode step: scores over [prompt | own tokens], one softmax, then both value sums. The
        queries of a prompt's rows are the rows of one matmul with its keys, all prompts in one
        batched matmul (a prompt continued by fewer rows than the most has padding rows)."""
        own_keys, own_values = self.update(layer, k, v)
        q = q.float()  # [B, H, 1, D]
        prefix_keys, prefix_values = self.prefix_keys[layer].float(), self.prefix_values[layer].float()
        groups, heads, width = prefix_keys.shape[0], q.shape[1], prefix_keys.shape[2]
        prompt, place = self._places
        queries = q.new_zeros(groups, self._width_rows, heads, q.shape[-1])
        queries[prompt, place] = q[:, :, 0]
        prefix_scores = torch.matmul(queries.transpose(1, 2), prefix_keys.transpose(-1, -2))  # [G, H, R, P]
        own_scores = torch.matmul(q, own_keys.float().transpose(-1, -2))
        scores = torch.cat((prefix_scores[prompt, :, place][:, :, None], own_scores), -1) * q.shape[-1] ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(-1)
        weights = probs.new_zeros(groups, heads, self._width_rows, width)
        weights[prompt, :, place] = probs[:, :, 0, :width]
        out = torch.matmul(probs[..., width:], own_values.float())
        out[:, :, 0] += torch.matmul(weights, prefix_values)[prompt, :, place]
        return out
