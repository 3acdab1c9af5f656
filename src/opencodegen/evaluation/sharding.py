"""Split an evaluation's problems over ranks by estimated work, not by count.

The work of a problem is estimated in token positions: every sample of it holds its prompt and its
completion budget in the KV cache and attends over them, so a problem costs
samples x (prompt tokens + budget). Problems go to ranks by greedy longest-processing-time
assignment (the costliest problem first, each to the least-loaded rank), which leaves the most
and the least loaded rank at most one problem's cost apart. The assignment depends only on the
costs and the number of ranks (ties broken by problem index and rank), so every rank computes the
same one, and a resumed run computes it again.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def balanced_assignment(costs: Sequence[float], world: int) -> list[list[int]]:
    """The problem indices of each of `world` ranks (each list in index order): longest processing
    time first, every problem to exactly one rank."""
    if world < 1:
        raise ValueError(f"world must be at least 1, got {world}")
    if any(c < 0 for c in costs):
        raise ValueError("costs must not be negative")
    loads = [(0.0, rank) for rank in range(world)]  # a heap of (load, rank): the least loaded, lowest rank first
    shards: list[list[int]] = [[] for _ in range(world)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        shards[rank].append(index)
        heapq.heappush(loads, (load + costs[index], rank))
    return [sorted(shard) for shard in shards]


def sample_costs(prompt_tokens: Sequence[int], samples: int, max_new_tokens: int | None,
                 max_total_tokens: int | None = None) -> list[int]:
    """Estimated token positions of each problem: samples x (prompt + budget), where the budget is
    `max_new_tokens`, or prompt + completion is `max_total_tokens` when that is set."""
    if max_total_tokens is not None:
        return [samples * max(n, max_total_tokens) for n in prompt_tokens]
    return [samples * (n + (max_new_tokens or 0)) for n in prompt_tokens]
