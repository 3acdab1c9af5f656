"""The unbiased pass@k estimator (Chen et al., 2021), per problem and averaged."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from opencodegen.errors import DataError


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of n samples, c of them correct, hold a correct one.

    Computed as the stable product 1 - prod_{i=n-c+1}^{n} (1 - k/i), with no huge binomials.
    """
    if not 0 <= c <= n or k < 1:
        raise DataError(f"pass@k needs 0 <= c <= n and k >= 1 (got n={n}, c={c}, k={k})")
    if n < k:
        raise DataError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


@dataclass
class PassAtK:
    """pass@k per problem and averaged, for every k all problems have enough samples for."""

    mean: dict[int, float]
    per_problem: dict[int, list[float]]
    dropped: list[int] = field(default_factory=list)  # requested k with n < k for some problem

    def as_dict(self) -> dict[str, float]:
        """{"pass@1": ..., "pass@10": ...}."""
        return {f"pass@{k}": value for k, value in self.mean.items()}


def estimate(num_samples: Sequence[int], num_correct: Sequence[int], ks: Iterable[int]) -> PassAtK:
    """pass@k of each problem (n samples, c correct) and their mean, for each k in `ks`."""
    if len(num_samples) != len(num_correct):
        raise DataError(f"{len(num_samples)} sample counts but {len(num_correct)} correct counts")
    if not num_samples:
        raise DataError("pass@k of zero problems")
    smallest = min(num_samples)
    kept = sorted(k for k in set(ks) if k <= smallest)
    dropped = sorted(k for k in set(ks) if k > smallest)
    per_problem = {k: [pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct)] for k in kept}
    mean = {k: sum(values) / len(values) for k, values in per_problem.items()}
    return PassAtK(mean=mean, per_problem=per_problem, dropped=dropped)
