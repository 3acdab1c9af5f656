"""A HumanEval-style program whose completion leaves with os._exit(0) before the tests run."""
# ruff: noqa: E402, I001  (laid out like a model completion)
def add(a, b):
    return a - b
import os
os._exit(0)


def check(candidate):
    assert candidate(1, 2) == 3


check(add)
