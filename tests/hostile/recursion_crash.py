"""Blow the C stack (deep recursion inside C code, with the recursion limit lifted)."""
import resource
import sys

resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))
sys.setrecursionlimit(10**8)
nested = []
for _ in range(100_000):
    nested = [nested]
repr(nested)
