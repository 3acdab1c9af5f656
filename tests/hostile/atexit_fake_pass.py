"""Register os._exit(0) and silence stderr, then fail the test."""
import atexit
import os
import sys

atexit.register(os._exit, 0)
sys.stderr = open(os.devnull, "w")


def add(a, b):
    return a - b


def check(candidate):
    assert candidate(1, 2) == 3


check(add)
