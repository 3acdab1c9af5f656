"""A decode cache for n samples per prompt that keeps each prompt's keys and values once.

Rows [r0, r1) of the batch continue prompt g. The prompts' keys/values, left-padded to the
longest (P tokens), are stored once per layer as [G, H, P, D]; each row stores only its generated
tokens. A decode step attends to a prompt with one matmul for all of its rows' queries, so the
prompt is read once per step instead of once per row — the step's memory traffic for the cache
drops from rows × (P + t) to G × P + rows × t tokens, and so does the cache's size.
"""

from __future__ import annotations

import torch

from opencodegen.model import CodeGenForCausalLM, KVCache


class SharedPrefixCache(KVCache):
    """`groups`: (a cache holding a prompt, its row there, number of rows continuing it), in row order."""

    def __init__(self, model: CodeGenForCausalLM, groups: list[tuple[KVCache, int, int]], max_new_tokens: int) -> None:
        config = model.config
        super().__init__(config, sum(n for _, _, n in groups), max_new_tokens, model.dtype, model.device)
        longest = max(prefix.length for prefix, _, _ in groups)
        shape = (len(groups), config.n_head, longest, config.head_dim)
        self.prefix_keys = [torch.zeros(shape, dtype=model.dtype, device=model.device) for _ in range(config.n_layer)]
        self.prefix_values = [torch.zeros_like(t) for t in self.prefix_keys]
        for g, (prefix, row, _) in enumerate(groups):
            for ours, theirs in ((self.prefix_keys, prefix.keys), (self.prefix_values, prefix.values)):
                for layer, source in enumerate(theirs):
                    ours[layer][g, :, longest - prefix.length :] = source[row, :, : prefix.length]
        self.length = self.offset = longest
        self._row_groups = [g for g, (_, _, n) in enumerate(groups) for _ in range(n)]
        self._runs = self._find_runs()

    def _find_runs(self) -> list[tuple[int, int, int]]:
        """(group, first row, end row) of each run of rows continuing the same prompt."""
        runs: list[tuple[int, int, int]] = []
        for row, g in enumerate(self._row_groups):
            if runs and runs[-1][0] == g:
                runs[-1] = (g, runs[-1][1], row + 1)
            else:
                runs.append((g, row, row + 1))
        return runs

    def compact(self, rows: list[int]) -> SharedPrefixCache:
        super().compact(rows)
        self._row_groups = [self._row_groups[r] for r in rows]
        self._runs = self._find_runs()
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
        own_scores = torch.matmul(q, own_keys.float().transpose(-1, -2))
        scores = torch.cat((prefix_scores, own_scores), -1) * q.shape[-1] ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(-1)
        out = torch.matmul(probs[..., width:], own_values.float())
        for g, r0, r1 in self._runs:
            weights = probs[r0:r1, :, 0, :width].transpose(0, 1)  # [H, rows, P]
            out[r0:r1, :, 0] += torch.matmul(weights, prefix_values[g].float()).transpose(0, 1)
        return out
