"""A decode cache for n samples per prompt that keeps each prompt's keys and values once.

Rows continuing prompt g form a contiguous run of the batch. The prompts' keys/values, left-padded
to the longest (P tokens), are stored once per layer as [G, H, P, D]; each row stores only the
tokens generated after it joined (`offset` = P). A decode step attends to a prompt with one matmul
for all of its rows' queries, so the prompt is read once per step instead of once per row — the
step's memory traffic for the cache drops from rows × (P + t) to G × P + rows × t tokens, and so
does the cache's size. Prompts continued by one row are read with one batched matmul for all such
rows. Rows may join later (new prompts are appended, the rows' own tokens are copied over) and
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

    fused_decode = False  # the native decode step knows nothing of the shared prompts

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
        """The runs of several rows continuing one prompt (group, first row, end row), and the
        rows that continue a prompt alone with their groups (index tensors, or None)."""
        runs: list[tuple[int, int, int]] = []
        for row, g in enumerate(self._row_groups):
            if runs and runs[-1][0] == g:
                runs[-1] = (g, runs[-1][1], row + 1)
            else:
                runs.append((g, row, row + 1))
        self._runs = [run for run in runs if run[2] - run[1] > 1]
        alone = [(r0, g) for g, r0, r1 in runs if r1 - r0 == 1]
        device = self.keys[0].device
        self._alone = (None if not alone else
                       tuple(torch.tensor(column, device=device) for column in zip(*alone)))

    def compact(self, rows: list[int]) -> SharedPrefixCache:
        super().compact(rows)
        self._row_groups = [self._row_groups[r] for r in rows]
        self._plan()
        return self

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """One decode step: scores over [prompt | own tokens], one softmax, then both value sums."""
        own_keys, own_values = self.update(layer, k, v)
        q = q.float()  # [B, H, 1, D]
        prefix_keys, prefix_values = self.prefix_keys[layer], self.prefix_values[layer]
        width = prefix_keys.shape[2]
        prefix_scores = q.new_empty(q.shape[0], q.shape[1], 1, width)
        for g, r0, r1 in self._runs:  # the run's queries as the rows of one matmul per head
            queries = q[r0:r1, :, 0].transpose(0, 1)  # [H, rows, D]
            scores = torch.matmul(queries, prefix_keys[g].float().transpose(-1, -2))  # [H, rows, P]
            prefix_scores[r0:r1, :, 0] = scores.transpose(0, 1)
        if self._alone is not None:
            rows, groups = self._alone
            prefix_scores[rows] = torch.matmul(q[rows], prefix_keys[groups].float().transpose(-1, -2))
        own_scores = torch.matmul(q, own_keys.float().transpose(-1, -2))
        scores = torch.cat((prefix_scores, own_scores), -1) * q.shape[-1] ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(-1)
        out = torch.matmul(probs[..., width:], own_values.float())
        for g, r0, r1 in self._runs:
            weights = probs[r0:r1, :, 0, :width].transpose(0, 1)  # [H, rows, P]
            out[r0:r1, :, 0] += torch.matmul(weights, prefix_values[g].float()).transpose(0, 1)
        if self._alone is not None:
            rows, groups = self._alone
            out[rows] += torch.matmul(probs[rows, :, :, :width], prefix_values[groups].float())
        return out
